"""Workloads: Podman containers and Kubernetes manifests that devices run.

- :mod:`afield.workloads.manifests` reads manifests (plain YAML or a kustomization) with limits,
  refuses what podman cannot play, and knows the on-device layout
  (``/usr/lib/afield/manifests{,.d/*}``, ``/etc/afield/manifests{,.d/*}``, ``delete/``). Pure.
- :mod:`afield.workloads.podman` plays, removes and watches them with ``podman kube play``, and
  runs their readiness probes (podman 4.3 does not).
- :mod:`afield.workloads.baked` brings up the workloads baked into the image at boot and waits
  for them (the greenboot check).
- :mod:`afield.workloads.apps` applies the fleet manager's runtime applications, rolling a
  failed update back to the manifests that ran before.
"""
