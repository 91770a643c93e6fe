"""Health, readiness and the API description: public, and served without network access."""

from __future__ import annotations

from litestar.testing import AsyncTestClient

from stella.gateway.app import create_app
from stella.gateway.settings import Settings

from .conftest import Gateway, assert_problem

OPERATIONS = {
    "healthz",
    "readyz",
    "createTenant",
    "listTenants",
    "getTenant",
    "createPrincipal",
    "listPrincipals",
    "getPrincipal",
    "updatePrincipal",
    "deletePrincipal",
    "createToken",
    "listTokens",
    "getToken",
    "revokeToken",
    "createComponent",
    "listComponents",
    "getComponent",
    "updateComponent",
    "deleteComponent",
    "registerVersion",
    "listVersions",
    "syncVersions",
    "createRelease",
    "listReleases",
    "getRelease",
    "updateRelease",
    "markReleaseReady",
    "deprecateRelease",
    "createEnvironment",
    "listEnvironments",
    "getEnvironment",
    "updateEnvironment",
    "deleteEnvironment",
    "addFreezeWindow",
    "listFreezeWindows",
    "removeFreezeWindow",
    "getEnvironmentState",
    "recordScanResult",
    "requestPromotion",
    "listPromotions",
    "getPromotion",
    "getPromotionDecision",
    "approvePromotion",
    "rejectPromotion",
    "getPromotionApprovals",
    "cancelPromotion",
    "overridePromotionFreeze",
    "listPromotionEvidence",
    "listWorkflowTemplates",
    "saveWorkflowTemplate",
    "getWorkflowTemplate",
    "getWorkflowRun",
    "listEvidence",
    "listEvidenceKeys",
    "exportEvidence",
    "getEvidence",
    "verifyEvidence",
    "listDeadLetters",
    "getDeadLetter",
    "replayDeadLetter",
    "listPromotionEvents",
    "listEventTypes",
    "listEvents",
    "streamEvents",
    "createWebhook",
    "listWebhooks",
    "getWebhook",
    "updateWebhook",
    "deleteWebhook",
    "listWebhookDeliveries",
    "redeliverWebhookDelivery",
    "agentHeartbeat",
    "agentTaskFeed",
    "agentTaskLogs",
    "agentTaskResult",
    "agentTaskResults",
    "cancelDeploymentJob",
    "checkTargetDrift",
    "createAgentToken",
    "createTarget",
    "deleteTarget",
    "getAgent",
    "getDeploymentJob",
    "getEvidenceCheckpoint",
    "getEvidenceConsistencyProof",
    "getEvidenceInclusionProof",
    "getPromotionDeployment",
    "getTarget",
    "listAgents",
    "listDeploymentJobs",
    "listEnvironmentTargets",
    "listTargets",
    "registerAgent",
    "remediateTarget",
    "revokeAgent",
    "rollbackDeploymentJob",
    "resumeDeploymentJob",
    "updateTarget",
    "listIntegrationTypes",
    "createIntegration",
    "listIntegrations",
    "getIntegration",
    "updateIntegration",
    "deleteIntegration",
    "testIntegration",
    "createSecret",
    "listSecrets",
    "deleteSecret",
    "installPlugin",
    "listPlugins",
    "getPlugin",
    "createPluginInstance",
    "listPluginInstances",
    "getPluginInstance",
    "updatePluginInstance",
    "deletePluginInstance",
}


async def test_health_readiness_and_docs_need_no_token(gateway_settings: Settings) -> None:
    # Litestar's own test client runs the whole application, start-up included.
    async with AsyncTestClient(create_app(gateway_settings)) as client:
        health = await client.get("/healthz")
        assert (health.status_code, health.json()["status"]) == (200, "ok")
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json() == {"status": "ready", "checks": {"database": "ok", "nats": "ok"}}

        document = await client.get("/api/v1/openapi.json")
        assert document.status_code == 200
        spec = document.json()
        assert spec["openapi"].startswith("3.1")
        operations = {op["operationId"] for path in spec["paths"].values() for op in path.values()}
        assert operations == OPERATIONS
        assert spec["components"]["securitySchemes"]["bearerToken"]["scheme"] == "bearer"
        create = spec["paths"]["/api/v1/components"]["post"]
        assert "application/problem+json" in create["responses"]["400"]["content"]
        assert spec["paths"]["/healthz"]["get"]["security"] == [{}]
        assert [tag["name"] for tag in spec["tags"]] == [
            "health",
            "tenants",
            "principals",
            "tokens",
            "components",
            "releases",
            "environments",
            "scan-results",
            "promotions",
            "targets",
            "agents",
            "deployments",
            "workflows",
            "evidence",
            "dead-letters",
            "events",
            "webhooks",
            "integrations",
            "secrets",
            "plugins",
        ]
        used = {tag for path in spec["paths"].values() for op in path.values() for tag in op.get("tags", [])}
        assert used <= {tag["name"] for tag in spec["tags"]}
        # Workflow edges are {from, to} in requests and responses alike.
        assert set(spec["components"]["schemas"]["EdgeIn"]["properties"]) == {"from", "to"}
        assert set(spec["components"]["schemas"]["EdgeOut"]["properties"]) == {"from", "to"}
        export = spec["paths"]["/api/v1/evidence/export"]["get"]
        assert "application/gzip" in export["responses"]["200"]["content"]
        assert [p["name"] for p in export["parameters"]] == ["from", "to"]

        assert (await client.get("/api/docs/openapi.json")).json() == spec
        # The served document publishes pydantic's schemas, whichever of its addresses is asked first.
        assert spec["components"]["schemas"]["ComponentCreate"]["additionalProperties"] is False

        docs = await client.get("/api/docs")
        assert docs.status_code == 200
        assert "/api/docs/assets/swagger-ui-bundle.js" in docs.text
        # Every script and style is served by the gateway itself: the page works offline.
        assert "https://" not in docs.text.split("spec:")[0]
        script = await client.get("/api/docs/assets/swagger-ui-bundle.js")
        assert script.status_code == 200
        assert "SwaggerUIBundle" in script.text


async def test_readiness_reports_what_is_down(gateway: Gateway) -> None:
    nats_client = gateway.runtime.nats
    assert nats_client is not None
    await nats_client.close()
    response = await gateway.call("GET", "/readyz", None)
    body = assert_problem(response, 503, "SYS_NOT_READY")
    assert body["checks"] == {"database": "ok", "nats": "disconnected"}
    # Liveness does not depend on the dependencies.
    assert (await gateway.call("GET", "/healthz", None)).status_code == 200


async def test_unknown_paths_and_methods_are_problems(gateway: Gateway) -> None:
    tenant = await gateway.tenant()
    assert_problem(await gateway.call("GET", "/api/v1/nothing-here", tenant.token), 404, "RES_NOT_FOUND")
    assert_problem(await gateway.call("POST", "/api/v1/nothing-here", tenant.token), 404, "RES_NOT_FOUND")
    not_allowed = await gateway.call("PATCH", "/api/v1/principals", tenant.token)
    assert_problem(not_allowed, 405, "VAL_METHOD_NOT_ALLOWED")
    too_big = await gateway.call(
        "POST",
        "/api/v1/principals",
        tenant.token,
        content=b'{"name": "' + b"x" * (2 * 1024 * 1024) + b'"}',
        headers={"Content-Type": "application/json"},
    )
    assert_problem(too_big, 413, "VAL_BODY_TOO_LARGE")
