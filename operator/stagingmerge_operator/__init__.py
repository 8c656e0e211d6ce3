"""stagingmerge operator: reconciles StagingMerge resources into merge Jobs."""

GROUP = "stagingmerge.io"
VERSION = "v1alpha1"
PLURAL = "stagingmerges"
KIND = "StagingMerge"
API_VERSION = f"{GROUP}/{VERSION}"
