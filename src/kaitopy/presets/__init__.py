"""kaitopy.presets"""
