"""The promotion context's pure domain, one topic a module: errors, encoding (time and canonical JSON),
environment, release (releases and approvals as this context sees them), outcome (a gate decision's outcome),
status (states, transitions, reason codes), events, promotion (the Promotion state machine and the deploy
queue) and request (requesting a promotion).
"""
