"""kaitopy.runtime"""
