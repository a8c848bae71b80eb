"""`make deploy-test` (python -m ops.deploy_test): the images, the compose stack and the k8s/ manifests run for real
in a container runtime (podman), not only validated. See __main__.py for the steps."""
