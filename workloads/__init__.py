"""Real workloads for the engine: GenAI CPU processing, a local LLM server, graphs."""
