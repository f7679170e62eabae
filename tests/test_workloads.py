"""The benchmark building blocks: GenAI CPU work, GIL-releasing work, the LLM server and client."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from workloads import gil_release
from workloads.genai import (
    AnswerError,
    Calibration,
    bm25,
    calibrate,
    corpus,
    decode,
    encode,
    generate,
    parse_answer,
    process,
    rank,
    train_bpe,
    units_for,
)
from workloads.llm import (
    ENV_API_KEY,
    ENV_BASE_URL,
    ENV_MODEL,
    LLMClient,
    LLMConfigError,
    LLMServer,
    chat_once,
    completion_text,
)

ROOT = Path(__file__).resolve().parent.parent
TEXT = corpus(400, seed=11)


def min_cpu_s(fn: Callable[[], object], runs: int = 3) -> float:
    """The least CPU time of ``runs`` calls: the cost with the machine's noise taken out."""
    best = float("inf")
    for _ in range(runs):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def min_cpu_s_in_turns(
    a: Callable[[], object], b: Callable[[], object], turns: int = 5
) -> tuple[float, float]:
    """The least CPU time of ``a`` and of ``b``, measured in turns (a, b, a, b...).

    This VM's CPU runs up to ~1.5x faster while its other core idles: measured
    in turns, both minima come from the same quiet moments, so their ratio is
    not a slow moment's over a fast one's.
    """
    best_a = best_b = float("inf")
    for _ in range(turns):
        best_a = min(best_a, min_cpu_s(a, runs=1))
        best_b = min(best_b, min_cpu_s(b, runs=1))
    return best_a, best_b


def in_two_threads(fn: Callable[[], object]) -> tuple[float, float]:
    """Run ``fn`` in two threads at once: (wall seconds, process CPU seconds)."""
    threads = [threading.Thread(target=fn) for _ in range(2)]
    t0, c0 = time.perf_counter(), time.process_time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, time.process_time() - c0


def wall(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@pytest.fixture(autouse=True)
def no_llm_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests configure the client explicitly; a developer's real API settings must not leak in."""
    for name in (ENV_BASE_URL, ENV_API_KEY, ENV_MODEL):
        monkeypatch.delenv(name, raising=False)


# -- genai -----------------------------------------------------------------


class TestCorpus:
    def test_deterministic_and_exact_length(self) -> None:
        """The same seed gives the same text, of exactly the words asked for."""
        assert corpus(100, seed=3) == corpus(100, seed=3)
        assert len(corpus(100, seed=3).split()) == 100
        assert corpus(100, seed=3) != corpus(100, seed=4)
        assert corpus(0) == ""


class TestBPE:
    def test_round_trip_is_exact(self) -> None:
        """Decoding the ids gives back the text byte for byte, whitespace and unicode included."""
        merges = train_bpe(TEXT, 40)
        for text in (TEXT, "  Hello,\tWörld!\n\nend  ", "", "ünïcödé ✓ 日本"):
            assert decode(encode(text, merges), merges) == text

    def test_training_is_deterministic_and_compresses(self) -> None:
        """Training twice learns the same merges, and the merges shorten the encoding."""
        merges = train_bpe(TEXT, 40)
        assert merges == train_bpe(TEXT, 40)
        assert len(merges) == 40
        assert len(encode(TEXT, merges)) < len(TEXT.encode()) / 2
        assert encode(TEXT, []) == list(TEXT.encode())

    def test_unknown_token_is_rejected(self) -> None:
        """An id outside the vocabulary is a clear ValueError."""
        with pytest.raises(ValueError, match="outside the vocabulary"):
            decode([256], [])


class TestGenerate:
    def test_deterministic_per_seed(self) -> None:
        """The same seed walks the same chain; another seed another one."""
        assert generate(TEXT, 30, seed=1) == generate(TEXT, 30, seed=1)
        assert generate(TEXT, 30, seed=1) != generate(TEXT, 30, seed=2)

    def test_uses_words_of_its_training_text(self) -> None:
        """Generated text has the length asked for, in the training text's words."""
        out = generate(TEXT, 50, seed=5).split()
        assert len(out) == 50
        assert set(out) <= set(TEXT.lower().replace(".", "").split())


class TestBM25:
    def test_relevant_passage_ranks_first(self) -> None:
        """The passage sharing the query's rare terms outranks the others."""
        passages = [corpus(40, seed=s) for s in range(5)]
        passages.insert(3, "the quarterly revenue forecast for zentara and velmor markets")
        assert rank("zentara revenue forecast", passages, top=2)[0] == 3

    def test_no_overlap_scores_zero(self) -> None:
        """A passage without any query term scores exactly 0, one with a term above 0."""
        miss, hit = bm25("alpha beta", ["gamma delta", "alpha"])
        assert miss == 0.0 and hit > 0


class TestParseAnswer:
    def test_valid_answer(self) -> None:
        """A well-formed answer parses, with the score as a float."""
        raw = json.dumps({"summary": "ok", "score": 1, "tags": ["a"]})
        assert parse_answer(raw) == {"summary": "ok", "score": 1.0, "tags": ["a"]}

    @pytest.mark.parametrize(
        ("raw", "pattern"),
        [
            ("{not json", "not JSON"),
            ("[1, 2]", "JSON object"),
            ('{"score": 0.5, "tags": []}', "summary"),
            ('{"summary": "s", "score": 1.5, "tags": []}', "score"),
            ('{"summary": "s", "score": true, "tags": []}', "score"),
            ('{"summary": "s", "score": 0.5, "tags": "x"}', "tags"),
            ('{"summary": "s", "score": 0.5, "tags": [1]}', "tags"),
        ],
    )
    def test_bad_answers_are_rejected(self, raw: str, pattern: str) -> None:
        """Malformed answers raise AnswerError naming what is wrong."""
        with pytest.raises(AnswerError, match=pattern):
            parse_answer(raw)


class TestProcess:
    def test_deterministic_and_json_able(self) -> None:
        """The same input, units and seed give the same JSON-able summary."""
        a = process(TEXT, 12, seed=4)
        assert a == process(TEXT, 12, seed=4)
        assert json.loads(json.dumps(a)) == a
        assert a["units"] == 12 and a["tokens"] > 0 and len(a["top"]) == 3

    def test_depends_on_input_seed_and_units(self) -> None:
        """Changing the text, the seed or the units changes the result."""
        base = process(TEXT, 8)["checksum"]
        assert process(TEXT + " extra", 8)["checksum"] != base
        assert process(corpus(400, seed=12), 8)["checksum"] != base
        assert process(TEXT, 8, seed=1)["checksum"] != base
        assert process(TEXT, 9)["checksum"] != base

    def test_same_result_in_another_process(self) -> None:
        """A fresh interpreter with another hash seed computes the same summary (worker-safe)."""
        code = (
            "import json; from workloads.genai import corpus, process; "
            "print(json.dumps(process(corpus(400, seed=11), 6, seed=2)))"
        )
        env = {**os.environ, "PYTHONHASHSEED": "4242"}
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
            check=True, timeout=60,
        )  # fmt: skip
        assert json.loads(out.stdout) == process(TEXT, 6, seed=2)

    def test_negative_units_rejected(self) -> None:
        """Negative units are a ValueError, zero units only the set-up."""
        with pytest.raises(ValueError, match="units"):
            process(TEXT, -1)
        assert process(TEXT, 0)["tokens"] == 0


class TestCalibration:
    def test_calibrate_measures_positive_cost(self) -> None:
        """Calibration reports a positive measured ms per unit and set-up cost."""
        cal = calibrate(target_s=0.02, repeats=3)
        assert cal.ms_per_unit > 0 and cal.fixed_ms >= 0
        assert cal.samples == 3 and cal.units >= 1

    def test_takes_the_least_cost_not_the_median(self) -> None:
        """Three of every five runs slowed 2x (a busy neighbour): the calibration still
        reads the quiet cost, so workloads keep their size on a busy machine."""
        from workloads.genai import calibrate_units

        calls = iter(range(10**6))

        def spin(seconds: float) -> None:
            t0 = time.thread_time()
            while time.thread_time() - t0 < seconds:
                pass

        def work(units: int) -> None:
            slowed = next(calls) % 5 in (0, 2, 4)
            spin(units * 0.0005 * (2.0 if slowed else 1.0))

        cal = calibrate_units(work, target_s=0.01, repeats=5)
        assert 0.4 <= cal.ms_per_unit <= 0.75, cal

    def test_units_for(self) -> None:
        """units_for subtracts the set-up, divides by the unit cost, and does some work."""
        cal = Calibration(ms_per_unit=2.0, fixed_ms=10.0)
        assert units_for(0.5, cal) == 245
        assert units_for(0.001, cal) == 1
        assert units_for(0, cal) == 0
        with pytest.raises(ValueError):
            units_for(-1, cal)

    def test_work_scales_linearly(self) -> None:
        """Four times the units cost 2.5x to 6x the CPU time (20 units: enough that the
        set-up, ~3 units' worth, cannot flatten the ratio; fixed, not calibrated, so a
        calibration taken while the machine was slow cannot shrink them). Measured in
        turns: CI once read 2.3x measuring one size after the other. Square-root
        scaling would read 2x."""
        units = 20
        one, four = min_cpu_s_in_turns(
            lambda: process(TEXT, units), lambda: process(TEXT, 4 * units)
        )
        assert 2.5 <= four / one <= 6.0, (units, one, four)

    def test_genai_holds_the_gil(self) -> None:
        """Two threads of genai work never use much more than one core between them."""
        units = units_for(0.15, calibrate(target_s=0.02, repeats=3))
        wall_s, cpu_s = in_two_threads(lambda: process(TEXT, units))
        assert cpu_s / wall_s < 1.3, (cpu_s, wall_s)


# -- gil_release -----------------------------------------------------------


class TestGilRelease:
    def test_deterministic_and_depends_on_input(self) -> None:
        """Same input same checksum; another text or seed another checksum."""
        a = gil_release.process("alpha", 3)
        assert a == gil_release.process("alpha", 3)
        assert a["checksum"] != gil_release.process("beta", 3)["checksum"]
        assert a["checksum"] != gil_release.process("alpha", 3, seed=1)["checksum"]
        assert a["bytes_hashed"] == 3 * gil_release.BUFFER_BYTES

    def test_calibration_and_linear_scaling(self) -> None:
        """Calibration is positive and four times the units cost 2.5x to 6x the CPU."""
        cal = gil_release.calibrate(target_s=0.02, repeats=3)
        assert cal.ms_per_unit > 0 and cal.workload == "gil_release"
        units = gil_release.units_for(0.03, cal)
        one, four = min_cpu_s_in_turns(
            lambda: gil_release.process("x", units), lambda: gil_release.process("x", 4 * units)
        )
        assert 2.5 <= four / one <= 6.0, (units, one, four)

    @pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
    def test_two_threads_overlap(self) -> None:
        """Two threads run at once: the process uses well over one core's CPU time per
        second of wall time (best of 6 tries). CPU time, not a wall-time ratio: on a VM
        whose host is busy both threads still run, each at less than a core's speed.
        Skipped, not failed, when other processes held a core in every try."""
        from engine.bench.cpushare import free_cores, snapshot

        units = gil_release.units_for(0.15, gil_release.calibrate(target_s=0.02, repeats=3))

        def work() -> None:
            gil_release.process("x", units)

        tries = []
        for _ in range(6):
            before = snapshot()
            wall_s, cpu_s = in_two_threads(work)
            free = free_cores(before, snapshot(), wall_s, 2)
            tries.append((round(cpu_s / wall_s, 2), free))
            if cpu_s / wall_s > 1.3:
                return
        if all(free is not None and free < 1.75 for _, free in tries):
            pytest.skip(f"another process held a core in every try: {tries}")
        raise AssertionError(f"two threads never ran at once (cpu/wall, cores free): {tries}")


# -- LLM server and client -------------------------------------------------


class TestLLMServer:
    async def test_chat_completion_over_http(self) -> None:
        """A real HTTP chat completion returns the prompt's deterministic reply."""
        async with LLMServer(latency_s=0) as srv, LLMClient(srv.base_url) as client:
            text = await client.chat("hello there", max_tokens=20)
            assert text == await client.chat("hello there", max_tokens=20)
            assert len(text.split()) == 20
            assert text == completion_text("user: hello there", 20)
            assert await client.models() == ["engine-local"]
            assert srv.requests == 3

    async def test_streaming_matches_plain(self) -> None:
        """The SSE stream, joined, is the same text as the plain response."""
        async with LLMServer(latency_s=0, token_interval_s=0.001) as srv:
            plain = await chat_once(srv.base_url, "stream me", max_tokens=15)
            streamed = await chat_once(srv.base_url, "stream me", max_tokens=15, stream=True)
            assert streamed == plain

    async def test_stream_wire_format(self) -> None:
        """Streamed events are chat.completion.chunk objects ending in data: [DONE]."""
        async with LLMServer(latency_s=0) as srv, httpx.AsyncClient() as http:
            body = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 3,
                    "stream": True}  # fmt: skip
            r = await http.post(f"{srv.base_url}/chat/completions", json=body)
            assert r.headers["content-type"].startswith("text/event-stream")
            events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
            assert events[-1] == "[DONE]"
            chunks = [json.loads(e) for e in events[:-1]]
            assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
            assert len(chunks) == 1 + 3 + 1  # role, one per word, finish

    async def test_latency_is_honoured(self) -> None:
        """A call takes at least the server's latency, or the per-request override."""
        async with LLMServer(latency_s=0.3) as srv:
            t0 = time.perf_counter()
            await chat_once(srv.base_url, "wait")
            assert time.perf_counter() - t0 >= 0.3
            t0 = time.perf_counter()
            await chat_once(srv.base_url, "wait", latency_s=0.05)
            assert 0.05 <= time.perf_counter() - t0 < 0.3

    async def test_concurrent_calls_overlap(self) -> None:
        """50 calls of 0.3 s at once finish in < 1.5 s, per-call and shared clients alike."""
        async with LLMServer(latency_s=0.3) as srv:
            t0 = time.perf_counter()
            replies = await asyncio.gather(
                *(chat_once(srv.base_url, f"q{i}", max_tokens=8) for i in range(50))
            )
            assert time.perf_counter() - t0 < 1.5
            assert len(set(replies)) > 1
            async with LLMClient(srv.base_url) as client:
                t0 = time.perf_counter()
                await asyncio.gather(*(client.chat(f"q{i}") for i in range(50)))
                assert time.perf_counter() - t0 < 1.5
            assert srv.requests == 100

    async def test_bad_request_raises_http_error(self) -> None:
        """An invalid request is a 400 with an OpenAI-style error, raised by httpx as is."""
        async with LLMServer(latency_s=0) as srv, LLMClient(srv.base_url) as client:
            with pytest.raises(httpx.HTTPStatusError) as info:
                await client.chat("x", max_tokens=0)
            assert info.value.response.status_code == 400
            assert "max_tokens" in info.value.response.json()["error"]["message"]
            with pytest.raises(httpx.HTTPStatusError):
                await client.chat("x", max_tokens=0, stream=True)

    async def test_api_key_required_when_set(self) -> None:
        """A server with an API key answers 401 without it and 200 with it."""
        async with LLMServer(latency_s=0, api_key="sekrit") as srv:
            with pytest.raises(httpx.HTTPStatusError, match="401"):
                await chat_once(srv.base_url, "x")
            assert await chat_once(srv.base_url, "x", api_key="sekrit")

    async def test_lifecycle_misuse(self) -> None:
        """No URL before start, no second start, close is idempotent, no pickling."""
        srv = LLMServer(latency_s=0)
        with pytest.raises(RuntimeError, match="not running"):
            _ = srv.base_url
        async with srv:
            with pytest.raises(RuntimeError, match="already been started"):
                await srv.start()
            with pytest.raises(TypeError, match="cannot be pickled"):
                pickle.dumps(srv)
        await srv.aclose()
        assert "closed" in repr(srv)

    def test_thread_hosted_start_stop(self) -> None:
        """A thread-hosted server serves sync callers and stop() leaves no thread behind."""
        before = set(threading.enumerate())
        srv = LLMServer.start_in_thread(latency_s=0)
        r = httpx.post(
            f"{srv.base_url}/chat/completions",
            json={"messages": [{"role": "user", "content": "sync"}], "max_tokens": 4},
        )
        assert r.status_code == 200 and r.json()["object"] == "chat.completion"
        srv.stop()
        srv.stop()  # idempotent
        assert set(threading.enumerate()) == before

    async def test_thread_hosted_from_a_loop(self) -> None:
        """Another loop can call a thread-hosted server and close it with aclose()."""
        srv = LLMServer.start_in_thread(latency_s=0.1)
        try:
            assert await chat_once(srv.base_url, "from a loop", max_tokens=5)
        finally:
            await srv.aclose()
        assert "closed" in repr(srv)

    @pytest.mark.timeout(60)
    def test_standalone_module(self) -> None:
        """python -m workloads.llm serves until SIGINT, then exits cleanly."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "workloads.llm", "--port", "0", "--latency", "0"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            url = line.split()[1]
            assert httpx.get(f"{url}/models").json()["data"][0]["id"] == "engine-local"
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, err
        assert "stopped" in out


class TestLLMClient:
    def test_env_read_at_construction(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The environment is read when the client is built; arguments win over it."""
        monkeypatch.setenv(ENV_BASE_URL, "https://api.example.com/v1/")
        monkeypatch.setenv(ENV_API_KEY, "k1")
        monkeypatch.setenv(ENV_MODEL, "m1")
        client = LLMClient()
        monkeypatch.setenv(ENV_BASE_URL, "http://changed.invalid/v1")
        assert client.base_url == "https://api.example.com/v1"
        assert client.model == "m1" and client.has_api_key
        assert "k1" not in repr(client)
        assert LLMClient("http://other:1/v1", model="m2").model == "m2"

    async def test_env_configures_real_calls(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """With only the environment set, chat_once reaches the server with the key."""
        async with LLMServer(latency_s=0, api_key="envkey") as srv:
            monkeypatch.setenv(ENV_BASE_URL, srv.base_url)
            monkeypatch.setenv(ENV_API_KEY, "envkey")
            assert len((await chat_once(None, "hi", max_tokens=7)).split()) == 7

    def test_clear_error_without_config(self) -> None:
        """No base URL and no environment: an error naming the variable to set."""
        with pytest.raises(LLMConfigError, match=ENV_BASE_URL):
            LLMClient()
        with pytest.raises(LLMConfigError, match="http"):
            LLMClient("localhost:8000/v1")

    async def test_lifecycle_misuse(self) -> None:
        """Calls need 'async with'; a closed client says so; clients are not picklable."""
        client = LLMClient("http://127.0.0.1:9/v1")
        with pytest.raises(RuntimeError, match="async with"):
            await client.chat("x")
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(client)
        async with client:
            pass
        await client.aclose()
        with pytest.raises(RuntimeError, match="closed"):
            await client.chat("x")

    async def test_connection_errors_propagate(self) -> None:
        """A dead endpoint raises httpx's own error: retrying is the engine's job."""
        async with LLMServer(latency_s=0) as srv:
            url = srv.base_url
        with pytest.raises(httpx.ConnectError):
            await chat_once(url, "anyone?")


class TestSyncClient:
    def test_blocking_call_matches_the_async_client(self) -> None:
        """workloads.llm_sync answers what LLMClient answers, through the stdlib alone."""
        from workloads.llm_sync import SyncLLMError, chat_once_sync

        srv = LLMServer.start_in_thread(latency_s=0)
        try:
            text = chat_once_sync(srv.base_url, "hello there", max_tokens=12, latency_s=0.0)
            assert text == completion_text("user: hello there", 12)
        finally:
            srv.stop()
        with pytest.raises(SyncLLMError, match="no LLM endpoint"):
            chat_once_sync(None, "x")


class TestSnippets:
    def test_deterministic_and_scales(self) -> None:
        """score_snippets is a pure function of its input, costs nothing at 0 units
        and grows with units."""
        from workloads.genai import calibrate_snippets, score_snippets

        assert score_snippets("ka lo", 3, 5) == score_snippets("ka lo", 3, 5)
        assert score_snippets("ka lo", 3, 5) != score_snippets("ka lo", 4, 5)
        cal = calibrate_snippets(target_s=0.01, repeats=3)
        assert cal.ms_per_unit > 0 and cal.fixed_ms < 0.5


class TestSeed:
    """workloads.seed: 4 agents, each a real HTTP call then real CPU work, joined."""

    async def test_three_modes_same_state_cpu_in_workers(self) -> None:
        """Identical final state in the three modes; in parallel the cpu calls ran in
        worker processes, in the other two in the driver."""
        from workloads import seed

        async with LLMServer(latency_s=0.0) as srv:
            app = seed.build(srv.base_url)
            state = seed.SeedState(api_s=0.01, units=3)
            results = {
                m: await app.arun(state, mode=m) for m in ("sequential", "concurrent", "parallel")
            }
            assert srv.requests == 12  # 4 real API calls per mode
        finals = {m: r.state for m, r in results.items()}
        assert finals["sequential"] == finals["concurrent"] == finals["parallel"]
        assert len(finals["parallel"].analyses) == 4
        for mode, r in results.items():
            driver, pids = r.trace.driver_pid, r.trace.pids("cpu")
            if mode == "parallel":
                assert pids and driver not in pids, pids
            else:
                assert pids == {driver}, (mode, pids)

    def test_script_names_where_cpu_calls_ran(self, capsys: pytest.CaptureFixture[str]) -> None:
        """The script says 'in the driver' for sequential and concurrent, never that the
        driver's pid is a worker's."""
        from workloads import seed

        srv = LLMServer.start_in_thread(latency_s=0)
        try:
            seed._run_modes(seed.build(srv.base_url), seed.SeedState(api_s=0.01, units=3))
        finally:
            srv.stop()
        lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
        assert "cpu calls in the driver" in lines["sequential"]
        assert "cpu calls in the driver" in lines["concurrent"]
        assert "cpu calls in worker pids" in lines["parallel"]
