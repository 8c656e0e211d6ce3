-- Argo CD health check for stagingmerge.io/StagingMerge.
-- Progressing while the merge runs (Succeeded=Unknown) or the operator has not yet
-- observed the latest spec, Healthy when Succeeded=True, Degraded when
-- Succeeded=False, Suspended while spec.suspend holds it back.
local hs = {}
hs.status = "Progressing"
hs.message = "Waiting for the stagingmerge operator"
if obj.status == nil then
  return hs
end
if obj.metadata ~= nil and obj.metadata.generation ~= nil and
    obj.status.observedGeneration ~= nil and
    obj.status.observedGeneration < obj.metadata.generation then
  hs.message = "The operator has not observed the latest spec yet"
  return hs
end
if obj.status.conditions ~= nil then
  for _, condition in ipairs(obj.status.conditions) do
    if condition.type == "Succeeded" then
      if condition.status == "True" then
        hs.status = "Healthy"
      elseif condition.status == "False" then
        hs.status = "Degraded"
      elseif condition.reason == "Suspended" then
        hs.status = "Suspended"
      else
        hs.status = "Progressing"
      end
      hs.message = (condition.reason or "") .. ": " .. (condition.message or "")
      return hs
    end
  end
end
return hs
