-- wrk script: POST a message to one of N sessions per request; counts answers by status.
-- usage: wrk -s post.lua ... -- <sessions> <prefix>
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
  sessions = tonumber(args[1]) or 1000
  prefix = (args[2] or "wrk") .. "-" .. tostring(math.random(1, 1e9))
  counter = 0
end

function request()
  counter = counter + 1
  local body = '{"session_id":"' .. prefix .. "-" .. (counter % sessions) .. '","message":"wrk ' .. counter .. '"}'
  return wrk.format("POST", "/v1/session/message", { ["Content-Type"] = "application/json" }, body)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    for code, n in pairs(thread:get("statuses")) do
      total[code] = (total[code] or 0) + n
    end
  end
  io.write("STATUS")
  for code, n in pairs(total) do
    io.write(" " .. code .. "=" .. n)
  end
  io.write("\n")
  io.write(string.format("LATENCY_US p50=%d p99=%d max=%d\n", latency:percentile(50), latency:percentile(99), latency.max))
  io.write(string.format("ERRORS connect=%d read=%d write=%d timeout=%d status=%d\n", summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.timeout, summary.errors.status))
end
