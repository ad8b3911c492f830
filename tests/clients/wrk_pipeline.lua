-- wrk script: every request() is DEPTH pipelined GETs (one write), asking for ?length= 1, 2, …, and
-- every response is checked: status 200, and the body equal to the start of the reference text (the
-- server's body for the longest length, in the file named by the first script argument) with a
-- length wrk was asked for. wrk counts the pipelined responses itself; this counts good and bad ones
-- per thread, and done() prints one line:
--   RESULT {"ok":…,"bad":…,"requests":…,"connect":…,"read":…,"write":…,"status":…,"timeout":…,"first_bad":"…"}
-- Usage: wrk -t2 -c20 -d2s -s wrk_pipeline.lua URL -- REF_FILE [DEPTH]

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   local f = assert(io.open(args[1], "rb"))
   ref = f:read("*a")
   f:close()
   depth = tonumber(args[2] or "8")
   local step = math.floor(#ref / depth)
   local r = {}
   allowed = {}
   for i = 1, depth do
      local n = i * step
      allowed[n] = true
      r[i] = wrk.format("GET", "/?length=" .. n)
   end
   pipelined = table.concat(r)
   ok, bad, first_bad = 0, 0, ""
end

function request()
   return pipelined
end

function response(status, headers, body)
   if status == 200 and allowed[#body] and body == ref:sub(1, #body) then
      ok = ok + 1
   else
      bad = bad + 1
      if first_bad == "" then
         first_bad = "status " .. status .. ", " .. #body .. " body bytes"
      end
   end
end

function done(summary, latency, requests)
   local ok_all, bad_all, first = 0, 0, ""
   for _, t in ipairs(threads) do
      ok_all = ok_all + t:get("ok")
      bad_all = bad_all + t:get("bad")
      local fb = t:get("first_bad")
      if first == "" and fb ~= nil then first = fb end
   end
   local e = summary.errors
   io.write(string.format(
      'RESULT {"ok":%d,"bad":%d,"requests":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"first_bad":"%s"}\n',
      ok_all, bad_all, summary.requests, e.connect, e.read, e.write, e.status, e.timeout, first))
end
