-- Tests of deploy/argocd/health.lua, run with a Lua 5.1 interpreter (scripts/test.sh installs
-- lua5.1; Argo CD's gopher-lua implements Lua 5.1). Usage, from the repository root:
--
--   lua5.1 tests/argocd/health_test.lua                 run every case and the drift check
--   lua5.1 tests/argocd/health_test.lua --write-patch   regenerate deploy/argocd/argocd-cm-patch.yaml
--   lua5.1 tests/argocd/health_test.lua --eval          read one object (a Lua table literal)
--                                                       from stdin, print "<status>\t<message>"
--
-- The script under test runs the way Argo CD runs a check from argocd-cm: a chunk with the
-- object in the global `obj`, returning a table {status, message}; only the base and table
-- libraries (and a reduced os) exist, strings have no methods (gopher-lua opens no string
-- library for it). Reading an unknown global or writing any global is an error here, so a
-- missing `local` or a call into an unavailable library fails the test instead of Argo CD.

local SCRIPT = "deploy/argocd/health.lua"
local PATCH = "deploy/argocd/argocd-cm-patch.yaml"
local CM_KEY = "resource.customizations.health.ecs.volcengine.io_EcsInstance"
local VALID = { Healthy = true, Progressing = true, Degraded = true, Suspended = true, Missing = true, Unknown = true }

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

local source = read(SCRIPT)
local chunk_fn = assert(loadstring(source, "=" .. SCRIPT))

-- What Argo CD's VM offers a health script (lua.go: OpenPackage, OpenBase, OpenTable, safe os).
local ALLOWED = {
  "assert", "error", "ipairs", "next", "pairs", "pcall", "rawequal", "rawget", "rawset",
  "select", "setmetatable", "getmetatable", "tonumber", "tostring", "type", "unpack", "xpcall",
  "print", "_VERSION",
}

local function sandbox(object)
  local env = { obj = object, table = table, os = { time = os.time, date = os.date, clock = os.clock } }
  for _, name in ipairs(ALLOWED) do
    env[name] = _G[name]
  end
  env._G = env
  return setmetatable(env, {
    __index = function(_, k)
      error("global '" .. tostring(k) .. "' does not exist in Argo CD's Lua VM", 2)
    end,
    __newindex = function(_, k)
      error("health.lua assigns the global '" .. tostring(k) .. "' (missing local?)", 2)
    end,
  })
end

-- Runs the check on one object; returns status, message (or raises).
local function health(object)
  local strmt = getmetatable("")
  local string_index = strmt.__index
  strmt.__index = {} -- no string library in Argo CD: s:find() etc. must not be used
  setfenv(chunk_fn, sandbox(object))
  local ok, hs = pcall(chunk_fn)
  strmt.__index = string_index
  if not ok then
    error("health.lua failed: " .. tostring(hs), 0)
  end
  assert(type(hs) == "table", "health.lua must return a table, got " .. type(hs))
  assert(VALID[hs.status], "invalid health status " .. tostring(hs.status))
  assert(type(hs.message) == "string" and hs.message ~= "", "message must be a non-empty string")
  for k in pairs(hs) do
    assert(k == "status" or k == "message", "unexpected field in the result: " .. tostring(k))
  end
  return hs.status, hs.message
end

-- The argocd-cm patch embeds health.lua verbatim (indented four spaces).
local function patch_text()
  local lines = {
    "# Registers deploy/argocd/health.lua as the health check of EcsInstance in Argo CD.",
    "#   kubectl -n argocd patch configmap argocd-cm --patch-file deploy/argocd/argocd-cm-patch.yaml",
    "# Generated from health.lua by: lua5.1 tests/argocd/health_test.lua --write-patch",
    "apiVersion: v1",
    "kind: ConfigMap",
    "metadata:",
    "  name: argocd-cm",
    "  namespace: argocd",
    "data:",
    "  " .. CM_KEY .. ": |",
  }
  for line in (source .. "\n"):gmatch("(.-)\n") do
    if line == "" then
      lines[#lines + 1] = ""
    else
      lines[#lines + 1] = "    " .. line
    end
  end
  while lines[#lines] == "" do
    lines[#lines] = nil
  end
  return table.concat(lines, "\n") .. "\n"
end

-- Sample objects, shaped like what the operator writes (status.conditions as in src/api.rs).
local function cond(type_, status, reason, message, gen)
  return {
    type = type_, status = status, reason = reason, message = message or "",
    observedGeneration = gen or 1, lastTransitionTime = "2025-01-01T00:00:00Z",
  }
end

local function ecsi(o)
  local object = {
    apiVersion = "ecs.volcengine.io/v1alpha1",
    kind = "EcsInstance",
    metadata = {
      name = "web", namespace = "team-a", uid = "6f1c2a0e-0000-4000-8000-000000000001",
      generation = o.generation or 1,
      finalizers = { "ecs.volcengine.io/delete-instance" },
    },
    spec = { instanceId = "i-abc123" },
  }
  if o.deleting then
    object.metadata.deletionTimestamp = "2025-01-01T00:05:00Z"
  end
  if o.conds ~= nil or o.instanceStatus ~= nil then
    object.status = {
      instanceId = "i-abc123", region = "cn-beijing", instanceStatus = o.instanceStatus,
      observedGeneration = o.observed or o.generation or 1,
      conditions = o.conds,
    }
  end
  return object
end

-- The complete object the real operator wrote for a running VM (kubectl get -o json).
local REAL_READY = {
  apiVersion = "ecs.volcengine.io/v1alpha1",
  kind = "EcsInstance",
  metadata = {
    creationTimestamp = "2025-11-26T05:40:12Z",
    finalizers = { "ecs.volcengine.io/delete-instance" },
    generation = 1,
    name = "web",
    namespace = "e2e-rbac-1a2b3c4d",
    resourceVersion = "18231",
    uid = "0b3c4a55-57a6-4a3c-9d3e-7f1f3c8b9e21",
  },
  spec = {
    create = {
      imageId = "image-abc", instanceTypeId = "ecs.g1ie.large", securityGroupIds = { "sg-1" },
      subnetId = "subnet-1", zoneId = "cn-beijing-a",
    },
  },
  status = {
    conditions = {
      { lastTransitionTime = "2025-11-26T05:40:14Z", message = "VM i-3a9f0c1d2e is RUNNING", observedGeneration = 1, reason = "InstanceRunning", status = "True", type = "Ready" },
      { lastTransitionTime = "2025-11-26T05:40:12Z", message = "", observedGeneration = 1, reason = "Observed", status = "True", type = "Synced" },
    },
    createHash = "5f0e3b1c9a7d2e4f",
    createRequested = true,
    createdAt = "2025-11-26T05:40:12Z",
    instanceId = "i-3a9f0c1d2e",
    instanceStatus = "RUNNING",
    instanceTypeId = "ecs.g1ie.large",
    observedGeneration = 1,
    privateIp = "172.16.0.10",
    region = "cn-beijing",
    zoneId = "cn-beijing-a",
  },
}

local running = "VM i-abc123 is RUNNING"
local CASES = {
  -- healthy
  { "real object of a running VM", REAL_READY, "Healthy", "InstanceRunning: VM i-3a9f0c1d2e is RUNNING" },
  { "ready, generation observed", ecsi { instanceStatus = "RUNNING", conds = {
      cond("Ready", "True", "InstanceRunning", running), cond("Synced", "True", "Observed") } },
    "Healthy", "InstanceRunning: " .. running },
  { "ready while a transient cloud error is retried", ecsi { instanceStatus = "RUNNING", conds = {
      cond("Ready", "True", "InstanceRunning", running), cond("Synced", "False", "CloudThrottled", "DescribeInstances: throttled") } },
    "Healthy", "InstanceRunning: " .. running },
  { "ready with float generations (JSON numbers)", ecsi { generation = 3.0, observed = 3, instanceStatus = "RUNNING", conds = {
      cond("Ready", "True", "InstanceRunning", running, 3), cond("Synced", "True", "Observed", "", 3) } },
    "Healthy", "InstanceRunning: " .. running },

  -- no status
  { "no status", ecsi {}, "Progressing", "Waiting for the operator to reconcile the resource" },
  { "status without conditions", (function()
      local o = ecsi {}
      o.status = { observedGeneration = 1 }
      return o
    end)(), "Progressing", "Waiting for the operator to reconcile the resource" },
  { "empty conditions", ecsi { conds = {} }, "Progressing", "Waiting for the operator to reconcile the resource" },

  -- progressing
  { "creating", ecsi { conds = {
      cond("Ready", "False", "Creating", "RunInstances accepted; waiting for the VM"), cond("Synced", "True", "Observed") } },
    "Progressing", "Creating: RunInstances accepted; waiting for the VM" },
  { "VM starting", ecsi { instanceStatus = "STARTING", conds = {
      cond("Ready", "False", "InstanceNotRunning", "VM i-abc123 is STARTING"), cond("Synced", "True", "Observed"),
      cond("Reconciling", "True", "InstanceTransitioning", "VM i-abc123 is STARTING") } },
    "Progressing", "InstanceTransitioning: VM i-abc123 is STARTING" },
  { "spec changed, not observed yet", ecsi { generation = 2, observed = 1, instanceStatus = "RUNNING", conds = {
      cond("Ready", "True", "InstanceRunning", running), cond("Synced", "True", "Observed") } },
    "Progressing", "Waiting for the operator to observe generation 2" },
  { "status without observedGeneration", (function()
      local o = ecsi { conds = { cond("Ready", "True", "InstanceRunning", running) } }
      o.status.observedGeneration = nil
      return o
    end)(), "Progressing", "Waiting for the operator to observe generation 1" },
  { "cloud error before the first observation", ecsi { conds = {
      cond("Ready", "False", "CloudError", "DescribeInstances: 500"), cond("Synced", "False", "CloudError", "DescribeInstances: 500") } },
    "Progressing", "CloudError: DescribeInstances: 500" },
  { "throttled", ecsi { conds = {
      cond("Ready", "False", "CloudThrottled", "RunInstances: Throttling"), cond("Synced", "False", "CloudThrottled", "RunInstances: Throttling") } },
    "Progressing", "CloudThrottled: RunInstances: Throttling" },

  -- degraded
  { "VM gone outside Kubernetes", ecsi { instanceStatus = "NotFound", conds = {
      cond("Ready", "False", "InstanceNotFound", "VM i-abc123 does not exist in cn-beijing"), cond("Synced", "True", "Observed"),
      cond("Stalled", "True", "InstanceNotFound", "VM i-abc123 does not exist in cn-beijing") } },
    "Degraded", "InstanceNotFound: VM i-abc123 does not exist in cn-beijing" },
  { "invalid spec", ecsi { conds = {
      cond("Ready", "False", "InvalidSpec", "spec.instanceId and spec.create are both empty"),
      cond("Synced", "False", "InvalidSpec", "spec.instanceId and spec.create are both empty"),
      cond("Stalled", "True", "InvalidSpec", "spec.instanceId and spec.create are both empty") } },
    "Degraded", "InvalidSpec: spec.instanceId and spec.create are both empty" },
  { "immutable field changed on a running VM", ecsi { generation = 2, observed = 2, instanceStatus = "RUNNING", conds = {
      cond("Ready", "True", "InstanceRunning", running, 2),
      cond("Synced", "False", "ImmutableFieldChanged", "spec.create.imageId changed", 2),
      cond("Stalled", "True", "ImmutableFieldChanged", "spec.create.imageId changed", 2) } },
    "Degraded", "ImmutableFieldChanged: spec.create.imageId changed" },
  { "wrong credentials, never observed", ecsi { conds = {
      cond("Ready", "False", "CloudAuthError", "DescribeInstances: InvalidAccessKey"),
      cond("Synced", "False", "CloudAuthError", "DescribeInstances: InvalidAccessKey") } },
    "Degraded", "CloudAuthError: DescribeInstances: InvalidAccessKey" },
  { "wrong credentials after it was ready", ecsi { instanceStatus = "RUNNING", conds = {
      cond("Ready", "True", "InstanceRunning", running),
      cond("Synced", "False", "CloudAuthError", "DescribeInstances: SignatureDoesNotMatch") } },
    "Degraded", "CloudAuthError: DescribeInstances: SignatureDoesNotMatch" },
  { "user data Secret missing", ecsi { conds = {
      cond("Ready", "False", "UserDataNotFound", "user data Secret team-a/init key cloud-init not found"),
      cond("Synced", "False", "UserDataNotFound", "user data Secret team-a/init key cloud-init not found") } },
    "Degraded", "UserDataNotFound: user data Secret team-a/init key cloud-init not found" },
  { "user data Secret not readable by the operator", ecsi { conds = {
      cond("Ready", "False", "UserDataForbidden", "the operator may not read Secret team-a/init (user data)"),
      cond("Synced", "False", "UserDataForbidden", "the operator may not read Secret team-a/init (user data)") } },
    "Degraded", "UserDataForbidden: the operator may not read Secret team-a/init (user data)" },
  { "user data too large", ecsi { conds = {
      cond("Ready", "False", "UserDataTooLarge", "user data is 40000 bytes base64, over 32768"),
      cond("Synced", "False", "UserDataTooLarge", "user data is 40000 bytes base64, over 32768") } },
    "Degraded", "UserDataTooLarge: user data is 40000 bytes base64, over 32768" },
  { "VM settled in ERROR", ecsi { instanceStatus = "ERROR", conds = {
      cond("Ready", "False", "InstanceNotRunning", "VM i-abc123 is ERROR"), cond("Synced", "True", "Observed") } },
    "Degraded", "InstanceNotRunning: VM i-abc123 is ERROR" },

  -- suspended
  { "VM stopped outside Kubernetes", ecsi { instanceStatus = "STOPPED", conds = {
      cond("Ready", "False", "InstanceNotRunning", "VM i-abc123 is STOPPED"), cond("Synced", "True", "Observed") } },
    "Suspended", "InstanceNotRunning: VM i-abc123 is STOPPED" },
  -- in-place updates
  { "VM stopped by the operator to change its type", ecsi { instanceStatus = "STOPPED", conds = {
      cond("Ready", "False", "InstanceNotRunning", "VM i-abc123 is STOPPED"),
      cond("Synced", "False", "Drifted", "instanceTypeId differs"),
      cond("Reconciling", "True", "Drifted", "updating VM i-abc123 in place (STOPPED)") } },
    "Progressing", "Drifted: updating VM i-abc123 in place (STOPPED)" },
  { "drift on a running VM (being corrected, or reported under Never)", ecsi { instanceStatus = "RUNNING", conds = {
      cond("Ready", "True", "InstanceRunning", "VM i-abc123 is RUNNING"),
      cond("Synced", "False", "Drifted", "instanceName differs") } },
    "Healthy", "InstanceRunning: VM i-abc123 is RUNNING" },
  { "outputs ConfigMap owned by someone else", ecsi { instanceStatus = "RUNNING", conds = {
      cond("Ready", "True", "InstanceRunning", "VM i-abc123 is RUNNING"),
      cond("Synced", "False", "ConnectionInfoConflict", "ConfigMap team-a/conn exists") } },
    "Degraded", "ConnectionInfoConflict: ConfigMap team-a/conn exists" },
  { "VM stopping is still in transition", ecsi { instanceStatus = "STOPPING", conds = {
      cond("Ready", "False", "InstanceNotRunning", "VM i-abc123 is STOPPING"), cond("Synced", "True", "Observed"),
      cond("Reconciling", "True", "InstanceTransitioning", "VM i-abc123 is STOPPING") } },
    "Progressing", "InstanceTransitioning: VM i-abc123 is STOPPING" },

  -- deleting
  { "deleting, no status yet", ecsi { deleting = true }, "Progressing", "Deleting: waiting for the operator to delete the VM" },
  { "deleting, was ready", ecsi { deleting = true, instanceStatus = "RUNNING", conds = {
      cond("Ready", "True", "InstanceRunning", running), cond("Synced", "True", "Observed") } },
    "Progressing", "Deleting: waiting for the operator to delete the VM" },
  { "deleting, VM stopping", ecsi { deleting = true, instanceStatus = "STOPPING", conds = {
      cond("Ready", "False", "Deleting", "VM i-abc123 is STOPPING and cannot be deleted yet; retrying"),
      cond("Synced", "True", "DeletionPending", "VM i-abc123 is STOPPING and cannot be deleted yet; retrying") } },
    "Progressing", "Deleting: VM i-abc123 is STOPPING and cannot be deleted yet; retrying" },
  { "deleting, waiting for termination", ecsi { deleting = true, instanceStatus = "DELETING", conds = {
      cond("Ready", "False", "DeletionAccepted", "VM i-abc123 deleted (RequestId r-1)"), cond("Synced", "True", "Observed") } },
    "Progressing", "Deleting: VM i-abc123 deleted (RequestId r-1)" },
  { "deleting, transient cloud error", ecsi { deleting = true, conds = {
      cond("Ready", "False", "Deleting", "DeleteInstances for VM i-abc123 failed: InternalError"),
      cond("Synced", "False", "CloudError", "DeleteInstances for VM i-abc123 failed: InternalError") } },
    "Progressing", "Deleting: DeleteInstances for VM i-abc123 failed: InternalError" },
  { "deleting, left over Stalled from before", ecsi { deleting = true, instanceStatus = "STOPPING", conds = {
      cond("Ready", "False", "Deleting", "VM i-abc123 is STOPPING"), cond("Synced", "True", "DeletionPending", "VM i-abc123 is STOPPING"),
      cond("Stalled", "True", "ImmutableFieldChanged", "spec.create.imageId changed") } },
    "Progressing", "Deleting: VM i-abc123 is STOPPING" },
  { "deletion refused (deletion protection)", ecsi { deleting = true, conds = {
      cond("Ready", "False", "Deleting", "DeleteInstances refused VM i-abc123"),
      cond("Synced", "False", "DeletionRefused", "DeleteInstances refused VM i-abc123: OperationDenied.DeletionProtection") } },
    "Degraded", "Deletion blocked: DeletionRefused: DeleteInstances refused VM i-abc123: OperationDenied.DeletionProtection" },
  { "deletion refused and stalled (prepaid)", ecsi { deleting = true, conds = {
      cond("Ready", "False", "Deleting", "refused"), cond("Synced", "False", "DeletionRefused", "refused: prepaid"),
      cond("Stalled", "True", "DeletionRefused", "refused: prepaid") } },
    "Degraded", "Deletion blocked: DeletionRefused: refused: prepaid" },
  { "deletion with wrong credentials", ecsi { deleting = true, conds = {
      cond("Ready", "False", "Deleting", "DeleteInstances failed"),
      cond("Synced", "False", "CloudAuthError", "DeleteInstances for VM i-abc123 failed: InvalidAccessKey") } },
    "Degraded", "Deletion blocked: CloudAuthError: DeleteInstances for VM i-abc123 failed: InvalidAccessKey" },
  { "deletion held: account key unusable", ecsi { deleting = true, conds = {
      cond("Ready", "False", "Deleting", "EcsAccount team-a has no usable key"),
      cond("Synced", "False", "AccountNotReady", "EcsAccount team-a has no usable key") } },
    "Degraded", "Deletion blocked: AccountNotReady: EcsAccount team-a has no usable key" },

  -- paused (annotation ecs.volcengine.io/paused)
  { "paused while ready", ecsi { instanceStatus = "RUNNING", conds = {
      cond("Ready", "True", "InstanceRunning", running), cond("Synced", "False", "Paused", "paused: no cloud call") } },
    "Suspended", "Paused: paused: no cloud call" },
  { "paused deletion", ecsi { deleting = true, conds = {
      cond("Ready", "False", "Deleting", "paused: the deletion waits"), cond("Synced", "False", "Paused", "paused: the deletion waits") } },
    "Suspended", "Paused: paused: the deletion waits" },
}

-- Object literal from stdin (used by tests/e2e_rbac.rs on objects the real operator wrote).
if arg[1] == "--eval" then
  local text = io.read("*a")
  local object = assert(loadstring("return " .. text, "=stdin"))()
  local status, message = health(object)
  io.write(status, "\t", message, "\n")
  return
end

if arg[1] == "--write-patch" then
  local f = assert(io.open(PATCH, "wb"))
  f:write(patch_text())
  f:close()
  print("wrote " .. PATCH)
  return
end

local failed, total = 0, 0
for _, case in ipairs(CASES) do
  total = total + 1
  local name, object, want_status, want_message = case[1], case[2], case[3], case[4]
  local ok, status, message = pcall(health, object)
  if not ok then
    failed = failed + 1
    print("FAIL " .. name .. ": " .. tostring(status))
  elseif status ~= want_status or message ~= want_message then
    failed = failed + 1
    print(string.format("FAIL %s:\n  want %s %q\n  got  %s %q", name, want_status, want_message, status, message))
  else
    print(string.format("ok   %-50s %s", name, status))
  end
end

-- The sandbox itself must catch what Argo CD would reject.
local function must_fail(name, code)
  total = total + 1
  local saved = chunk_fn
  chunk_fn = assert(loadstring(code, "=" .. name))
  local ok = pcall(health, ecsi {})
  chunk_fn = saved
  if ok then
    failed = failed + 1
    print("FAIL sandbox accepted: " .. name)
  else
    print(string.format("ok   %-50s %s", "sandbox rejects " .. name, "error"))
  end
end
must_fail("string methods", 'local s = "Ready"; return { status = s:lower(), message = "m" }')
must_fail("the string library", 'return { status = string.format("%s", "Healthy"), message = "m" }')
must_fail("a global assignment", 'hs = { status = "Healthy", message = "m" }; return hs')
must_fail("an invalid status", 'return { status = "Ready", message = "m" }')

total = total + 1
local ok_patch, committed = pcall(read, PATCH)
if ok_patch and committed == patch_text() then
  print(string.format("ok   %-50s %s", PATCH .. " embeds health.lua", "same"))
else
  failed = failed + 1
  print("FAIL " .. PATCH .. " is stale: run lua5.1 tests/argocd/health_test.lua --write-patch")
end

print(string.format("%d/%d passed (%s)", total - failed, total, _VERSION))
if failed > 0 then
  os.exit(1)
end
