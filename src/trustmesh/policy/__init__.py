"""Authorization as data: canonical paths, route patterns, Cedar policies and decisions.

Pure: no sockets, no framework (ARCHITECTURE: `policy` is pure).
"""
