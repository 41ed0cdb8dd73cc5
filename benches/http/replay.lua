-- wrk script: sends pre-signed requests, each once. Thread n reads "<prefix>.<n>" (the argument
-- after `--`): raw HTTP requests, each preceded by its length in bytes and a newline. A thread
-- that runs out starts over; those requests are idempotent replays (a cheaper path), so `done`
-- counts them and the harness rejects a run that has any. `done` prints one line,
-- "wrk-result <json>", with what the harness reads.

local threads = {}

function setup(thread)
   thread:set("id", #threads)
   table.insert(threads, thread)
end

function init(args)
   local file = assert(io.open(args[1] .. "." .. id, "rb"))
   local data = file:read("*a")
   file:close()
   requests = {}
   local at = 1
   while at <= #data do
      local newline = string.find(data, "\n", at, true)
      local length = tonumber(string.sub(data, at, newline - 1))
      requests[#requests + 1] = string.sub(data, newline + 1, newline + length)
      at = newline + length + 1
   end
   available = #requests
   sent = 0
end

function request()
   sent = sent + 1
   return requests[(sent - 1) % available + 1]
end

function done(summary, latency, _)
   local replays = 0
   for _, thread in ipairs(threads) do
      replays = replays + math.max(0, thread:get("sent") - thread:get("available"))
   end
   local errors = summary.errors
   io.write(string.format(
      'wrk-result {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, '
         .. '"socket_errors": %d, "non_2xx": %d, "replays": %d}\n',
      summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
      errors.connect + errors.read + errors.write + errors.timeout, errors.status, replays))
end
