"""The workflow engine domain: templates, ``when`` conditions, run and step state machines, the scheduler.

One topic a module: :mod:`.errors`, :mod:`.states` (run and step statuses), :mod:`.conditions` (CEL
expressions), :mod:`.template` (templates and their order), :mod:`.validation`
(parsing and checking a template, a run's inputs), :mod:`.run` (runs, steps and their
transitions), :mod:`.events` and :mod:`.scheduler`.

Everything here is pure: no I/O, no clock reads, no random ids. Callers pass ``now`` (a timezone-aware
datetime, UTC by convention) and every id.

How the pieces fit together (the I/O layer drives this loop):

1. A template is saved: :func:`validate_template` parses and checks it (DAG, step types, retry, timeout,
   ``when`` expressions) and :func:`topological_order` gives its deterministic order.
2. A run is created with :func:`new_run` (run and one step per node, all ``pending``) and started with
   :func:`start_run`.
3. :func:`advance` (= :func:`schedule` + :func:`apply_schedule`) decides what happens now: steps to start
   (independent branches together), steps to skip, running steps that timed out, failed steps to retry, the
   run's completion, and :attr:`Schedule.next_wakeup_at`, the next instant the run needs attention, so the
   I/O layer sleeps until then instead of polling.
4. For each started step the I/O layer dispatches the step's work with :attr:`StartStep.idempotency_key`
   (the same key for the same run, node and attempt, so a step executed twice has one effect). A step that
   waits for an outside signal (an approval, a timer) is parked with :func:`begin_waiting`.
5. The step's result arrives: :func:`complete_step` records it (a duplicate or late result is a no-op),
   then :func:`advance` runs again.

Step readiness, skipping and ``run_on``
    A node starts once every predecessor is *settled* (succeeded, skipped, cancelled, or failed with no
    attempt left). What happens then depends on the node's ``run_on``:

    * ``success`` (default): a failed (or cancelled) predecessor skips the node (``upstream_failed``); when
      every predecessor was skipped the node is skipped too (``upstream_skipped``: the path leading to it
      was not taken); otherwise (at least one predecessor succeeded, the rest skipped) it may run.
    * ``always``: it may run whatever its predecessors' outcome (evidence is recorded for a rejected
      promotion too).
    * ``failure``: it may run only when at least one predecessor failed (a notification, a clean-up);
      otherwise it is skipped (``no_upstream_failure``).

    A node that may run is then checked against its ``when`` condition; false skips it
    (``condition_false``). Skipped nodes never fail a run; a run fails when any step ends failed (after its
    retries) or cancelled, and succeeds otherwise. Independent branches keep running after a failure
    elsewhere, so the run completes only once every step is settled.

Retries and timeouts
    ``retry.max_attempts`` counts every attempt, the first included. After attempt *k* fails, attempt
    *k + 1* is due ``backoff_s * k`` seconds after the failure was recorded. A ``running`` or ``waiting``
    step whose attempt started ``timeout_s`` ago or more is failed by the scheduler (and retried like any
    other failure).

Step inputs
    A step's resolved inputs are ``{"inputs": <run inputs>, "steps": {<node id>: {"status", "attempt",
    "outputs"}}}`` over every *upstream* node (its transitive predecessors, so the evidence step sees the
    gate decision two hops back). ``when`` conditions are evaluated over the same mapping.
"""
