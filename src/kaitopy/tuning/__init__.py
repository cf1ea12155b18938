"""kaitopy.tuning"""
