"""Optional full visual meshes for the twin, taken from franky-sim's FR3 description.

``TwinConfig(visual="meshes")`` dresses the same bodies (same frames, masses and primitive collision
geometry) in Franka's FR3 visual meshes, as shipped by franky-sim (Apache-2.0; pip install
'serl-suite[franka-sim]'); the primitives are hidden in render group 3. The Panda model gets the
FR3 look: its frames are identical. Software rendering of ~240k triangles takes tens of ms per frame,
so this is for snapshots and demos, not for training.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET

MESH_BODIES = {f"fr3_link{i}": f"link{i}" for i in range(8)} | {b: b for b in ("hand", "left_finger", "right_finger")}


def franky_sim_assets() -> str:
    """Folder holding franky-sim's fr3.xml, or ImportError naming the extra to install."""
    try:
        import franky_sim
    except ImportError as exc:
        raise ImportError("visual='meshes' needs franky-sim: pip install 'serl-suite[franka-sim]'") from exc
    return os.path.join(os.path.dirname(franky_sim.__file__), "assets")


def add_mesh_visuals(mjcf: str) -> str:
    """The twin's MJCF with FR3 visual meshes attached to its bodies and the primitives hidden."""
    assets = franky_sim_assets()
    source = ET.parse(os.path.join(assets, "fr3.xml")).getroot()
    mesh_files = {m.get("name"): m.get("file") for m in source.iter("mesh")}
    twin = ET.fromstring(mjcf)
    asset = twin.find("asset")
    for material in source.find("asset").iter("material"):
        ET.SubElement(asset, "material", name=f"fr3_{material.get('name')}", rgba=material.get("rgba", "1 1 1 1"))
    bodies = {body.get("name"): body for body in twin.iter("body")}
    used = set()
    for body in source.iter("body"):
        target = bodies.get(MESH_BODIES.get(body.get("name"), ""))
        if target is None:
            continue
        for geom in body.findall("geom"):
            if geom.get("class") != "visual":
                continue
            used.add(geom.get("mesh"))
            ET.SubElement(target, "geom", type="mesh", mesh=f"fr3_{geom.get('mesh')}", group="2", contype="0",
                          conaffinity="0", mass="0", material=f"fr3_{geom.get('material', 'white')}")
    for name in sorted(used):
        path = os.path.join(assets, "meshes", mesh_files[name])
        ET.SubElement(asset, "mesh", name=f"fr3_{name}", file=path)
    for body_name in MESH_BODIES.values():
        for geom in bodies[body_name].findall("geom"):
            if geom.get("type") != "mesh":
                geom.set("group", "3")  # collision primitives stay, out of the default render groups
    return ET.tostring(twin, encoding="unicode")
