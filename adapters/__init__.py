"""Everything that touches the outside: Gemini SDKs, the simulated provider,
the local Gemini-compatible server, storage, config files, CLI, metrics."""
