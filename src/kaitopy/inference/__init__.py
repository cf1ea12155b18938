"""kaitopy.inference"""
