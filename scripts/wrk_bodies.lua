-- wrk script for `cpe bench`: POST the JSON bodies of a file (one a line) in rotation, and print the
-- figures as one JSON line. Every "@@@@@@@@" in a body becomes a per-request 8-hex-digit tag, so that
-- the flow keys of every request differ and no server-side cache answers from an earlier request.
-- Bodies are split at their placeholders once, in init; a request costs one table.concat.
--
--   wrk -t1 -c32 -d5s --latency -s scripts/wrk_bodies.lua http://127.0.0.1:8000/v1/predict -- bodies.jsonl 0
--
-- Two more arguments send binary bodies: a Content-Type, and "hex" when each line is a body in hex digits
-- (MessagePack), e.g. `-- bodies.hex 0 application/msgpack hex`.

local PLACEHOLDER = "@@@@@@@@"
local templates = {}
local n, i, tag = 0, 0, 0
local path
local headers = { ["Content-Type"] = "application/json" }

function init(args)
   path = wrk.path
   headers["Host"] = wrk.headers["Host"]
   if args[3] then
      headers["Content-Type"] = args[3]
   end
   local hex = args[4] == "hex"
   for line in io.lines(args[1]) do
      if hex then
         line = line:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end)
      end
      if #line > 0 then
         local pieces, start = {}, 1
         while true do
            local s, e = string.find(line, PLACEHOLDER, start, true)
            if not s then
               pieces[#pieces + 1] = string.sub(line, start)
               break
            end
            pieces[#pieces + 1] = string.sub(line, start, s - 1)
            start = e + 1
         end
         n = n + 1
         templates[n] = pieces
      end
   end
   assert(n > 0, "no bodies in " .. args[1])
   tag = tonumber(args[2] or "0")
end

function request()
   i = i % n + 1
   tag = (tag + 1) % 2147483648
   return wrk.format("POST", path, headers, table.concat(templates[i], string.format("%08x", tag)))
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'CPE_BENCH_RESULT {"tool":"wrk","requests":%d,"duration_s":%.6f,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency_ms":{"p50":%.4f,"p90":%.4f,"p99":%.4f,"p999":%.4f,"max":%.4f,"mean":%.4f}}\n',
      summary.requests, summary.duration / 1e6,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50) / 1e3, latency:percentile(90) / 1e3, latency:percentile(99) / 1e3,
      latency:percentile(99.9) / 1e3, latency.max / 1e3, latency.mean / 1e3))
end
