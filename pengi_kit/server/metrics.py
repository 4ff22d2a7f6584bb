"""The server's counters, in Prometheus' text format (``GET /metrics``)."""
from __future__ import annotations

import threading
import time
from collections import Counter, deque

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
RATE_WINDOW = 10.0  # seconds over which tokens_per_second is measured


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets, self.counts, self.sum, self.count = buckets, [0] * len(buckets), 0.0, 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out = [f'{name}_bucket{{le="{b:g}"}} {c}' for b, c in zip(self.buckets, self.counts)]
        return out + [f'{name}_bucket{{le="+Inf"}} {self.count}', f"{name}_sum {self.sum:.6f}",
                      f"{name}_count {self.count}"]


class Metrics:
    """Requests by route and status, their latency, rows per decoding step and generated tokens;
    updated from the HTTP side and the decoder's thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()
        self.latency = Histogram(LATENCY_BUCKETS)
        self.batch = Histogram(BATCH_BUCKETS)
        self.tokens = 0
        self.recent: deque[tuple[float, int]] = deque()  # (time, tokens) of the last RATE_WINDOW seconds

    def request(self, route: str, status: int, seconds: float) -> None:
        with self.lock:
            self.requests[route, status] += 1
            if route == "/v1/chat/completions" and status == 200:
                self.latency.observe(seconds)

    def step(self, rows: int) -> None:
        with self.lock:
            self.batch.observe(rows)

    def generated(self, tokens: int) -> None:
        now = time.monotonic()
        with self.lock:
            self.tokens += tokens
            self.recent.append((now, tokens))

    def render(self, queued: int, running: int) -> str:
        now = time.monotonic()
        with self.lock:
            while self.recent and self.recent[0][0] < now - RATE_WINDOW:
                self.recent.popleft()
            rate = sum(t for _, t in self.recent) / RATE_WINDOW
            lines = ["# HELP pengi_kit_requests_total Requests answered, by route and HTTP status.",
                     "# TYPE pengi_kit_requests_total counter"]
            lines += [f'pengi_kit_requests_total{{route="{route}",status="{status}"}} {n}'
                      for (route, status), n in sorted(self.requests.items())]
            lines += ["# HELP pengi_kit_queue_depth Requests waiting for a decoding slot.",
                      "# TYPE pengi_kit_queue_depth gauge", f"pengi_kit_queue_depth {queued}",
                      "# HELP pengi_kit_running_rows Rows (choices, beams) decoding now.",
                      "# TYPE pengi_kit_running_rows gauge", f"pengi_kit_running_rows {running}",
                      "# HELP pengi_kit_batch_rows Rows in each decoding step.", "# TYPE pengi_kit_batch_rows histogram",
                      *self.batch.lines("pengi_kit_batch_rows"),
                      "# HELP pengi_kit_generated_tokens_total Tokens generated in answers.",
                      "# TYPE pengi_kit_generated_tokens_total counter", f"pengi_kit_generated_tokens_total {self.tokens}",
                      f"# HELP pengi_kit_tokens_per_second Tokens generated per second over the last {RATE_WINDOW:g} s.",
                      "# TYPE pengi_kit_tokens_per_second gauge", f"pengi_kit_tokens_per_second {rate:.3f}",
                      "# HELP pengi_kit_request_seconds Time to answer a chat completion, arrival to last byte.",
                      "# TYPE pengi_kit_request_seconds histogram", *self.latency.lines("pengi_kit_request_seconds")]
        return "\n".join(lines) + "\n"
