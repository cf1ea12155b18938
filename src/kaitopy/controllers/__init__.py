"""kaitopy.controllers"""
