-- Argo CD health of a distillery.dev/v1alpha1 Distillation.
-- Decisions read conditions (status.phase is only a summary for people), in this order:
-- not yet observed -> Progressing; Failed/Stalled -> Degraded; suspended -> Suspended;
-- Succeeded and Ready -> Healthy; anything else -> Progressing with the operator's own message.
local hs = {}

local function find(conditions, kind)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function describe(c, fallback)
  if c == nil or c.message == nil or c.message == "" then
    return fallback
  end
  if c.reason ~= nil and c.reason ~= "" then
    return c.reason .. ": " .. c.message
  end
  return c.message
end

local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to pick up the Distillation"
  return hs
end

-- Without this a spec edit would be judged by the previous generation's conditions.
local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = string.format("Waiting for the operator to observe generation %d", generation)
  return hs
end

local conditions = status.conditions
local function holds(kind)
  local c = find(conditions, kind)
  return c ~= nil and c.status == "True"
end

if holds("Failed") or holds("Stalled") then
  hs.status = "Degraded"
  local c = holds("Failed") and find(conditions, "Failed") or find(conditions, "Stalled")
  hs.message = describe(c, "Distillation failed")
  return hs
end

if status.phase == "Suspended" or holds("Suspended") then
  hs.status = "Suspended"
  hs.message = describe(find(conditions, "Suspended"), "Suspended by spec.suspend")
  return hs
end

if holds("Succeeded") and holds("Ready") then
  hs.status = "Healthy"
  if status.studentEndpoint ~= nil then
    hs.message = "Distilled student serving at " .. status.studentEndpoint
  else
    hs.message = describe(find(conditions, "Ready"), "Distillation finished")
  end
  return hs
end

-- In progress, possibly waiting for a GPU node pool (not a failure: an autoscaler may add nodes).
local reconciling = find(conditions, "Reconciling")
hs.status = "Progressing"
if reconciling ~= nil and reconciling.reason == "NoMatchingGPUNodePool" then
  hs.message = "Waiting for GPU capacity: " .. (reconciling.message or "")
elseif holds("Succeeded") then
  hs.message = describe(find(conditions, "Ready"), "Waiting for the student to serve")
else
  hs.message = describe(reconciling, "Phase " .. (status.phase or "Pending"))
end
return hs
