"""Maps the top-level plugin folders into the gotel namespace (DESIGN.md section 3)."""

from setuptools import find_packages, setup

# folder in the repository -> import name
MAPPED = {
    "receivers": "gotel.receivers",
    "processors": "gotel.processors",
    "exporters": "gotel.exporters",
    "connectors": "gotel.connectors",
    "extensions": "gotel.extensions",
    "bpf": "gotel.bpf",
    "config": "gotel.defaults",
}

packages = find_packages(include=["gotel", "gotel.*"])
package_dir = {"gotel": "gotel"}
for folder, name in MAPPED.items():
    package_dir[name] = folder
    for sub in find_packages(include=[folder, folder + ".*"]):
        packages.append(name + sub[len(folder):])

setup(packages=packages, package_dir=package_dir)
