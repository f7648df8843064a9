-- wrk script: POST the file named after `--` with a JSON content type; print one JSON line when done.
-- Usage: wrk -t1 -c8 -d10s --latency -s post.lua URL -- BODY_FILE
function init(args)
  local f = assert(io.open(args[1], "rb"))
  wrk.method = "POST"
  wrk.body = f:read("*a")
  wrk.headers["Content-Type"] = "application/json"
  f:close()
end

-- done(): report.lua, next to this script
dofile(debug.getinfo(1, "S").source:sub(2):match("^(.*/)") .. "report.lua")
