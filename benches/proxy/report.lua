-- wrk's report in one line that benches/proxy.sh reads: requests per second, latency
-- percentiles in microseconds, and every kind of error (a non-2xx/3xx answer is `status`).
done = function(summary, latency, requests)
  local secs = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    "RESULT rps=%.1f p50_us=%d p99_us=%d requests=%d connect=%d read=%d write=%d status=%d timeout=%d\n",
    summary.requests / secs, latency:percentile(50), latency:percentile(99), summary.requests,
    e.connect, e.read, e.write, e.status, e.timeout))
end
