"""The Stella deployment agent: runs on a target host and deploys what the gateway's task feed hands it."""
