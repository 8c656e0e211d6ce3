"""A real Kubernetes control plane for the e2e tests (issue 23); see plane.py."""
