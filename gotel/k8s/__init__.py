"""Kubernetes metadata shared by the k8s_attributes and resource_detection processors and pod discovery.

* client: an ApiClient of the official ``kubernetes`` package for an ``auth_type``;
* informer: list, then watch (bookmarks, relist after 410 Gone) in a thread;
* model: the compact records kept per pod, ReplicaSet, node and namespace;
* store: the shared metadata store and its indexes (uid, container id, IP, name);
* discovery: pods annotated for scraping turned into pull targets.
"""
