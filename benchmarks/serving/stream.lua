-- wrk script: a monitoring agent's traffic for a server that keeps each series' history (issue 13, item 4).
-- Each request carries ROWS rows; row number c (counting on from START across requests) is series
-- "<PREFIX>s<c % SERIES>" (PREFIX new for each benchmark run: a reused project's log holds the last run's series)
-- at step c // SERIES (5 minutes apart from 2024-01-01), with the metrics of template line c % lines: every
-- series' rows come in time order, each once, and a series comes back only SERIES rows later.
-- Usage: wrk -t1 -c8 -d10s --latency -s stream.lua URL -- TEMPLATE_FILE SERIES ROWS START PREFIX
-- TEMPLATE_FILE: one JSON object's members per line, without braces, series and time left out.
local lines, series, per, counter, prefix = {}, 64, 1, 0, ""
local base = 1704067200  -- 2024-01-01T00:00:00Z

function init(args)
  local f = assert(io.open(args[1], "rb"))
  for line in f:lines() do lines[#lines + 1] = line end
  f:close()
  series, per, counter, prefix = tonumber(args[2]), tonumber(args[3]), tonumber(args[4]), args[5]
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  local parts = {}
  for j = 1, per do
    local c = counter
    counter = counter + 1
    local t = base + math.floor(c / series) * 300
    parts[j] = string.format('{"entity": "%ss%d", "timestamp": "%s", %s}', prefix, c % series,
                             os.date("!%Y-%m-%dT%H:%M:%S", t), lines[c % #lines + 1])
  end
  return wrk.format(nil, nil, nil, '{"instances": [' .. table.concat(parts, ", ") .. ']}')
end

-- done(): report.lua, next to this script
dofile(debug.getinfo(1, "S").source:sub(2):match("^(.*/)") .. "report.lua")
