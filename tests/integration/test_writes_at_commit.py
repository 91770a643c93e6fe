"""The SQL types written beside each statement a service makes with ``write_at_commit`` are the types Postgres
gives its parameters, so every value is written as a constant of the type its column takes."""

from __future__ import annotations

import asyncpg
import pytest

from stella.events import repo as events
from stella.promotion import repo as promotion
from stella.testing import parameter_types
from stella.workflow import repo as workflow

WRITES = {
    "promotion.insert_promotion": ("promotion", promotion.INSERT_PROMOTION, promotion._INSERT_PROMOTION_TYPES),
    "promotion.update_promotion": ("promotion", promotion.UPDATE_PROMOTION, promotion._UPDATE_PROMOTION_TYPES),
    "promotion.insert_decision": ("promotion", promotion.INSERT_DECISION, promotion._INSERT_DECISION_TYPES),
    "workflow.update_run": ("workflow", workflow.UPDATE_RUN, workflow._UPDATE_RUN_TYPES),
    "workflow.upsert_steps": ("workflow", workflow.UPSERT_STEPS, workflow._UPSERT_STEPS_TYPES),
    "events.record_event": ("events", events._RECORD_EVENT, events._RECORD_EVENT_TYPES),
}


@pytest.mark.parametrize("write", sorted(WRITES))
async def test_a_write_at_commit_names_the_types_postgres_gives_its_parameters(fresh_database: str, write: str) -> None:
    schema, sql, types = WRITES[write]
    conn = await asyncpg.connect(fresh_database, server_settings={"search_path": schema})
    try:
        assert await parameter_types(conn, sql) == list(types)
    finally:
        await conn.close()
