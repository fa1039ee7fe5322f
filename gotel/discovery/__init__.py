"""Process discovery shared by eBPF and pull receivers: which Go processes run here, and which to target."""

from gotel.discovery.procfs import ProcessInfo, is_go_binary, process_info
from gotel.discovery.selector import Criteria, DiscoveryConfig
from gotel.discovery.watcher import ProcessAdded, ProcessEvent, ProcessRemoved, ProcessWatcher

__all__ = [
    "Criteria",
    "DiscoveryConfig",
    "ProcessAdded",
    "ProcessEvent",
    "ProcessInfo",
    "ProcessRemoved",
    "ProcessWatcher",
    "is_go_binary",
    "process_info",
]
