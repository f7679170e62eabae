"""Real workloads for the engine's benchmarks and examples.

- ``workloads.genai``: pure-Python "GenAI processing" (BPE, n-gram
  generation, BM25, JSON validation) that holds the GIL, sized in calibrated
  units.
- ``workloads.gil_release``: hashing and compression that release the GIL,
  the contrast case where threads do overlap.
- ``workloads.llm``: an OpenAI-compatible server on 127.0.0.1 and an httpx
  client, for LLM/API calls over real HTTP.
- ``workloads.seed``: the four-agent seed graph.

Nothing is imported here: a worker process that unpickles
``workloads.genai.process`` must not pay for aiohttp and httpx.
"""
