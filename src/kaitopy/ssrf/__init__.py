"""Checks that keep user-given URLs from reaching the cluster's or the node's own network (SSRF).

Shared by the admission webhook (which sees the URL as written) and the tuning downloader (which
also sees every address it connects to); both must read a host exactly as the HTTP client will.
"""
