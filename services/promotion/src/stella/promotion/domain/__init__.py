"""The promotion context's pure domain, one topic a module: errors, encoding (time and canonical JSON),
environments, releases as this context sees them, gate outcomes, the Promotion state machine, and ordering
(requesting a promotion and the deploy queue).
"""
