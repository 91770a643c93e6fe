"""The public HTTP API of Stella: authentication, tenants, problem details, relaying to services over NATS."""
