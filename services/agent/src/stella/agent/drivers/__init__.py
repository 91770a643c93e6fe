"""Drivers: how an agent runs a task against one kind of target (see :mod:`stella.agent.drivers.base`)."""
