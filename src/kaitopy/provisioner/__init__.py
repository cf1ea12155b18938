"""kaitopy.provisioner"""
