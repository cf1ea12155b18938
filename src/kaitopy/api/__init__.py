"""kaitopy.api"""
