-- Argo CD health check for ecs.volcengine.io/EcsInstance (see deploy/argocd/README.md).
--
-- Argo CD runs this with gopher-lua (Lua 5.1) and, for a check from argocd-cm, only the base
-- and table libraries: no string library, so no string methods (s:find, string.format).
-- Tests: tests/argocd/health_test.lua (scripts/test.sh), which enforces the same limits.
--
-- Verdicts, first match wins:
--   being deleted:
--     Synced=False Paused (annotation ecs.volcengine.io/paused), deleting or not  Suspended
--     Stalled=True DeletionRefused, or Synced=False CloudAuthError / DeletionRefused /
--     AccountNotFound / AccountNotAllowed / AccountChanged / AccountNotReady
--                                                        Degraded (needs a human)
--     otherwise                                          Progressing ("Deleting: ...")
--   no status / no conditions                            Progressing (not reconciled yet)
--   Stalled=True (InstanceNotFound, InvalidSpec, ImmutableFieldChanged, DeletionRefused)
--                                                        Degraded
--   Synced=False CloudAuthError / InvalidSpec / ImmutableFieldChanged / UserDataNotFound /
--     UserDataForbidden / UserDataTooLarge / ConnectionInfoConflict / ConnectionInfoFailed
--                                                        Degraded
--   status.observedGeneration < metadata.generation      Progressing (spec change not seen yet)
--   Ready=True                                           Healthy
--   Ready=False InstanceNotFound / InvalidSpec / ImmutableFieldChanged / CloudAuthError /
--     UserDataNotFound / UserDataForbidden / UserDataTooLarge
--                                                        Degraded
--   Ready=False InstanceNotRunning, VM settled in ERROR  Degraded
--   Ready=False InstanceNotRunning, VM settled STOPPED   Suspended (stopped outside Kubernetes;
--     while the operator restarts it for a type change Reconciling=True: Progressing)
--   Ready=True with Synced=False Drifted                 Healthy (the VM runs; the drift is
--     being corrected, or only reported under updatePolicy Never)
--   anything else (Creating, CloudError, CloudThrottled, a VM in transition, ...)
--                                                        Progressing

local hs = {}

local function conditions()
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  return obj.status.conditions
end

local function condition(t)
  local list = conditions()
  if list == nil then
    return nil
  end
  for _, c in ipairs(list) do
    if c.type == t then
      return c
    end
  end
  return nil
end

local function is_true(c)
  return c ~= nil and c.status == "True"
end

local function is_false(c)
  return c ~= nil and c.status == "False"
end

local function one_of(value, set)
  if value == nil then
    return false
  end
  for _, v in ipairs(set) do
    if v == value then
      return true
    end
  end
  return false
end

-- "Reason: message" (or whichever of the two is set).
local function describe(c, fallback)
  if c == nil then
    return fallback
  end
  local reason = c.reason or ""
  local message = c.message or ""
  if reason ~= "" and message ~= "" then
    return reason .. ": " .. message
  end
  if message ~= "" then
    return message
  end
  if reason ~= "" then
    return reason
  end
  return fallback
end

local DEGRADED_SYNCED = { "CloudAuthError", "InvalidSpec", "ImmutableFieldChanged", "UserDataNotFound",
  "UserDataForbidden", "UserDataTooLarge", "ConnectionInfoConflict", "ConnectionInfoFailed" }
local DEGRADED_READY = { "InstanceNotFound", "InvalidSpec", "ImmutableFieldChanged", "CloudAuthError", "UserDataNotFound",
  "UserDataForbidden", "UserDataTooLarge" }
-- A deletion no account may act for needs a person (fix the account, or the escape hatch).
local DEGRADED_DELETING = { "CloudAuthError", "DeletionRefused", "AccountNotFound", "AccountNotAllowed",
  "AccountChanged", "AccountNotReady" }
local DELETING_READY = { "Deleting", "DeletionAccepted" }

local function verdict()
  local ready = condition("Ready")
  local synced = condition("Synced")
  local stalled = condition("Stalled")

  -- Paused by its annotation: nothing happens until a person removes it, deletion included.
  if is_false(synced) and synced.reason == "Paused" then
    return "Suspended", describe(synced, "paused")
  end
  if obj.metadata ~= nil and obj.metadata.deletionTimestamp ~= nil then
    if is_true(stalled) and stalled.reason == "DeletionRefused" then
      return "Degraded", "Deletion blocked: " .. describe(stalled, "DeletionRefused")
    end
    if is_false(synced) and one_of(synced.reason, DEGRADED_DELETING) then
      return "Degraded", "Deletion blocked: " .. describe(synced, "not synced")
    end
    if ready ~= nil and one_of(ready.reason, DELETING_READY) and (ready.message or "") ~= "" then
      return "Progressing", "Deleting: " .. ready.message
    end
    return "Progressing", "Deleting: waiting for the operator to delete the VM"
  end

  if conditions() == nil or #conditions() == 0 then
    return "Progressing", "Waiting for the operator to reconcile the resource"
  end
  if is_true(stalled) then
    return "Degraded", describe(stalled, "Stalled")
  end
  if is_false(synced) and one_of(synced.reason, DEGRADED_SYNCED) then
    return "Degraded", describe(synced, "not synced")
  end

  local generation = obj.metadata and obj.metadata.generation
  local observed = obj.status.observedGeneration
  if generation ~= nil and (observed == nil or observed < generation) then
    return "Progressing", "Waiting for the operator to observe generation " .. tostring(generation)
  end

  if is_true(ready) then
    return "Healthy", describe(ready, "Ready")
  end
  if is_false(ready) then
    if one_of(ready.reason, DEGRADED_READY) then
      return "Degraded", describe(ready, "not ready")
    end
    if ready.reason == "InstanceNotRunning" and not is_true(condition("Reconciling")) then
      if obj.status.instanceStatus == "ERROR" then
        return "Degraded", describe(ready, "VM is in ERROR")
      end
      if obj.status.instanceStatus == "STOPPED" then
        return "Suspended", describe(ready, "VM is STOPPED")
      end
    end
  end
  local reconciling = condition("Reconciling")
  if is_true(reconciling) then
    return "Progressing", describe(reconciling, "Reconciling")
  end
  if is_false(synced) then
    return "Progressing", describe(synced, "not synced")
  end
  return "Progressing", describe(ready, "Waiting for the VM to become ready")
end

hs.status, hs.message = verdict()
return hs
