"""kaitopy.webhooks"""
