"""The touch world on MuJoCo: a two-finger gripper approaches a patch of material, touches it,
presses, pulls along it and lifts off. Seeded and deterministic.

The scene: a 10 cm square patch (MuJoCo height field, 64 x 64, the material's coarse map and
friction), a gripper on an x-y-z carriage (position actuators; the carriage's own weight is
compensated, the hand's is not, so the wrist sensor feels it), a force-torque site at the wrist
(MuJoCo's `force` and `torque` sensors), two fingers whose pads (square, colliding as flat domes)
touch the surface, a scene camera, and an occluder plate on the hand that is drawn only in the
"occluded" camera stream: the camera is blocked by the gripper from the first contact on. Shadows
are off (100x per frame).

The pull: the hand's x-y drive is a position servo whose force along the slide direction is
limited to the episode's `pull` (N), as a force-limited drive is. If the pull exceeds what the
surface's friction can hold, mu times the pads' load (which grows with the press), the finger
slides across the patch; if not, it holds where it is while the drive pulls. Across the slide the
servo stays stiff; at lift-off the drive stops pulling (its target is where the hand then is), so
the load coming off does not let a held finger slide.

Streams at their native rates (an episode of `seconds`):
  camera, camera_occluded  [30 Hz x s, 32, 32, 3] uint8
  tactile                  [60 Hz x s, 32, 32, 3] uint8 (left fingertip), tactile_reference [32, 32, 3]
  wrench                   [500 Hz x s, 6] float32 (N, N m; sensor noise added)
  audio                    [16 kHz x s] float32
  normal_force, tangential_force [500 Hz x s] float32: the surface's force on both pads (N) along
                           the patch's normal and in its plane, summed over the contacts' forces
  pad_speed                [500 Hz x s] float32: the pads' speed over the patch (m/s; the hand's,
                           as the fingers move only up and down on the hand)
  touching, slipping, lifted [500 Hz x s] bool; phase [500 Hz x s] int8 (index into PHASES)
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; set here, not in the user's shell

from dataclasses import dataclass  # noqa: E402

import numpy as np  # noqa: E402

from . import audio as audio_synth  # noqa: E402
from . import tactile as tactile_render  # noqa: E402
from .materials import COARSE, NAMES, appearance, height_maps, material, resize  # noqa: E402

PHYSICS_RATE, CAMERA_RATE, TACTILE_RATE, AUDIO_RATE = 500.0, 30.0, 60.0, 16000.0
PHASES = ("approach", "touch", "press", "slide", "lift")
HALF = 0.05  # half side of the patch (m)
PAD = 0.012  # side of a finger pad (m)
IMAGE = 32
# The camera sees a VISUAL x VISUAL copy of the surface (drawing the 64 x 64 field was about 80% of a
# frame's time); the fingers collide with the COARSE one, which is in group 3 and not drawn.
VISUAL = 32
TILES = 16  # the offscreen buffer holds TILES x TILES frames, read back in one go (TileRenderer)
HAND_MASS = 0.25  # kg: palm 0.15 and two fingers 0.05 each
XY_KP = 600.0  # N/m: the x-y drive's stiffness; its force is XY_KP times the target's distance
# The most the drive pulls with along the slide (N), drawn per episode, log-uniform over PULL. The
# pads' load while pulling is about 2.5-4.5 N (the hand's weight and the press), and a pull slides
# the finger once it exceeds a little over mu times that: 1-2 N on the smooth surface (mu 0.3),
# 3-5 N on gravel (mu 1). Over PULL the finger holds in some episodes and slides in others on every
# surface, on the low-friction ones more often: of episodes 0-99 of seed 0 (3 s) 48 slip, of each
# surface's 25 smooth 20, grass 13, brick 6, gravel 9.
PULL = (0.8, 8.0)
SLIP_SPEED = 0.005  # m/s: a pad sliding over the surface faster than this is slipping now (the stream)
# The surface's contact with a pad: its friction (the material's), condim 3 (sliding friction, no
# torsional or rolling) and its softness (MuJoCo's solref: time constant s, damping ratio) are the
# pair's, whatever the pad's own, because the surface has the higher priority (by default MuJoCo
# takes the larger friction of the two geoms and averages their solref). The contact's damping
# pushes back harder on the pad's leading edge, where the surface comes into it, than on its
# trailing edge, and the dome's normals there lean back: a resistance that grows with the slide's
# speed and adds to friction: at MuJoCo's default (0.02 s, 1) the tests' slide (3 cm/s) on the
# smooth surface (mu 0.3) measures 0.36 tangential per unit normal force at the pads (0.38 at the
# wrist), at a damping ratio of 0.7 0.33 (0.35). Less damping lets the pads bounce: at 0.5, or at
# (0.04 s, 0.25), a pad pressed on the surface and left there oscillates with its finger's spring at
# about 30 Hz, its load spread by 0.5-1.2 N (sd) of 3.5 N and, at (0.04 s, 0.25), gone one step in
# twenty; each time it goes, a sideways force slides the pad on: 0.4-0.8 of what friction holds
# dragged the finger along the smooth surface at 2-4 mm/s.
CONTACT_SOLREF = (0.02, 0.7)
# Convex collision's tolerance (m). At MuJoCo's default, 1e-6, the dome's contact points and normals
# against the height field's prisms are off by enough to measure 0.36 on that slide (1e-5: 0.72);
# 1e-7 and 1e-8 both give 0.33, at the same cost.
CCD_TOLERANCE = 1e-7
# The pad collides as a flat dome, an ellipsoid GEL_HALF high under the pad's square. MuJoCo collides
# a height field prism by prism, and a box pad, against a prism it only partly covers, got a contact
# normal through its vertical side: in a slide on the smooth surface a third of the contacts' normal
# force pointed sideways, pressing on the pad from opposite sides (30 N in all against a 4.5 N
# load) and resisting the slide (0.66 tangential per unit normal force). An ellipsoid's contact
# normals are its own surface's.
GEL_HALF = 0.0015


# The fingers hang FINGER_Z below the wrist, FINGER_X to either side; each pad's centre sits PAD_Z
# below its finger, PAD_HALF thick: its face is at (+-FINGER_X, 0, FINGER_Z + PAD_Z - PAD_HALF).
FINGER_X, FINGER_Z, PAD_Z, PAD_HALF = 0.009, -0.026, -0.0135, 0.0015


def _finger(side: str, x: float) -> str:
    """A finger on a vertical spring (so both pads share the load on an uneven surface) and its pad."""
    return f"""
        <body name="finger_{side}" pos="{x} 0 {FINGER_Z}">
          <joint name="spring_{side}" type="slide" axis="0 0 1" stiffness="1500" damping="8" range="-0.003 0.003"/>
          <geom name="finger_{side}" type="box" size="0.003 0.006 0.012" mass="0.04" rgba="0.25 0.25 0.3 1"/>
          <geom name="pad_{side}" type="box" size="{PAD / 2} {PAD / 2} {PAD_HALF}" pos="0 0 {PAD_Z}" mass="0"
                contype="0" conaffinity="0" rgba="0.8 0.7 0.5 1"/>
          <geom name="gel_{side}" type="ellipsoid" size="{PAD / 2} {PAD / 2} {GEL_HALF}"
                pos="0 0 {PAD_Z - PAD_HALF + GEL_HALF}" mass="0.01" group="3"/>
        </body>"""


def scene_xml(relief: float, friction: float) -> str:
    return f"""
<mujoco model="touch-world">
  <option timestep="{1 / PHYSICS_RATE}" gravity="0 0 -9.81" cone="elliptic" noslip_iterations="2"
          ccd_tolerance="{CCD_TOLERANCE}"/>
  <visual><quality shadowsize="0"/><global offwidth="{IMAGE * TILES}" offheight="{IMAGE * TILES}"/></visual>
  <asset>
    <hfield name="surface" nrow="{COARSE}" ncol="{COARSE}" size="{HALF} {HALF} {relief} 0.005"/>
    <hfield name="look" nrow="{VISUAL}" ncol="{VISUAL}" size="{HALF} {HALF} {relief} 0.005"/>
    <texture name="look" type="2d" builtin="flat" width="128" height="128" rgb1="0.5 0.5 0.5"/>
    <material name="look" texture="look" texrepeat="1 1"/>
  </asset>
  <worldbody>
    <light pos="0 -0.1 0.4" dir="0 0.2 -1" castshadow="false" diffuse="0.8 0.8 0.8"/>
    <geom name="table" type="plane" size="0.3 0.3 0.01" pos="0 0 -0.0051" rgba="0.3 0.25 0.2 1"/>
    <geom name="surface" type="hfield" hfield="surface" group="3" priority="1" condim="3"
          friction="{friction} 0.005 0.0001" solref="{CONTACT_SOLREF[0]} {CONTACT_SOLREF[1]}"/>
    <geom name="look" type="hfield" hfield="look" material="look" contype="0" conaffinity="0"/>
    <camera name="scene" pos="0 -0.16 0.13" xyaxes="1 0 0 0 0.63 0.78" fovy="45"/>
    <body name="carriage" pos="0 0 0.06" gravcomp="1">
      <joint name="x" type="slide" axis="1 0 0" damping="20"/>
      <joint name="y" type="slide" axis="0 1 0" damping="20"/>
      <joint name="z" type="slide" axis="0 0 1" damping="20"/>
      <geom type="sphere" size="0.005" mass="0.05" contype="0" conaffinity="0" rgba="0.6 0.6 0.6 1"/>
      <body name="hand" pos="0 0 0">
        <site name="wrist" pos="0 0 0"/>
        <geom name="palm" type="box" size="0.02 0.01 0.006" pos="0 0 -0.008" mass="0.15" rgba="0.2 0.2 0.25 1"/>
        <geom name="occluder" type="box" size="0.08 0.002 0.07" pos="0 -0.035 0.0" mass="0" contype="0"
              conaffinity="0" rgba="0.15 0.15 0.18 0"/>
{_finger("l", -FINGER_X)}{_finger("r", FINGER_X)}      </body>
    </body>
  </worldbody>
  <actuator>
    <position joint="x" kp="{XY_KP:g}"/>
    <position joint="y" kp="{XY_KP:g}"/>
    <position joint="z" kp="1500"/>
  </actuator>
  <sensor>
    <force site="wrist"/>
    <torque site="wrist"/>
  </sensor>
</mujoco>"""


def stream_layout(seconds: float) -> dict[str, tuple[tuple[int, ...], type]]:
    """(shape, dtype) of every array `World.run` returns for an episode of `seconds`."""
    steps, frames = int(round(seconds * PHYSICS_RATE)), int(round(seconds * CAMERA_RATE))
    image = (IMAGE, IMAGE, 3)
    return {"camera": ((frames, *image), np.uint8), "camera_occluded": ((frames, *image), np.uint8),
            "tactile": ((int(round(seconds * TACTILE_RATE)), *image), np.uint8), "tactile_reference": (image, np.uint8),
            "wrench": ((steps, 6), np.float32), "audio": ((int(round(steps / PHYSICS_RATE * AUDIO_RATE)),), np.float32),
            "touching": ((steps,), np.bool_), "slipping": ((steps,), np.bool_), "lifted": ((steps,), np.bool_),
            "phase": ((steps,), np.int8), "normal_force": ((steps,), np.float32),
            "tangential_force": ((steps,), np.float32), "pad_speed": ((steps,), np.float32)}


def constants() -> dict:
    """The numbers an episode depends on that are neither a material's nor in `scene_xml`'s text,
    JSON-able: the episode cache's key hashes them with the scenes."""
    import inspect

    def defaults(fn) -> dict:
        return {k: p.default for k, p in inspect.signature(fn).parameters.items()
                if isinstance(p.default, (int, float)) and not isinstance(p.default, bool)}

    return {"rates": [PHYSICS_RATE, CAMERA_RATE, TACTILE_RATE, AUDIO_RATE], "patch_half": HALF, "pad": PAD,
            "image": IMAGE, "visual": VISUAL, "coarse": COARSE, "fingers": [FINGER_X, FINGER_Z, PAD_Z, PAD_HALF],
            "pull": list(PULL), "slip_speed": SLIP_SPEED,
            "tactile": defaults(tactile_render.render_frame), "audio": defaults(audio_synth.synthesize)}


@dataclass(frozen=True)
class EpisodeSpec:
    """What a seed decides about one episode."""

    material: str
    start: tuple[float, float]  # pad centre, x y (m)
    direction: float  # slide direction (rad)
    distance: float  # slide distance (m)
    press: float  # how far below the surface the hand is commanded while pressing (m)
    pull: float  # the most the x-y drive pulls with along the slide (N)
    times: tuple[float, ...]  # phase starts (s): touch, press, slide, lift
    tint: tuple[float, float, float]  # the camera's colour cast (lighting varies between episodes)
    seconds: float

    @classmethod
    def draw(cls, rng: np.random.Generator, *, seconds: float = 3.0, material_name: str | None = None):
        name = material_name or NAMES[int(rng.integers(len(NAMES)))]
        jitter = rng.uniform(-0.06, 0.06, 4) * seconds / 3
        times = tuple(float(t) for t in (np.array([0.8, 1.1, 1.4, 2.2]) * seconds / 3 + jitter))
        return cls(material=name, start=tuple(float(v) for v in rng.uniform(-0.015, 0.015, 2)),
                   direction=float(rng.uniform(0, 2 * np.pi)), distance=float(rng.uniform(0.015, 0.03)),
                   press=float(rng.uniform(0.001, 0.003)), times=times,
                   tint=tuple(float(v) for v in rng.uniform(0.8, 1.2, 3)), seconds=seconds,
                   pull=float(np.exp(rng.uniform(*np.log(PULL)))))


def _smooth(a: float, b: float, s: float) -> float:
    s = min(max(s, 0.0), 1.0)
    return a + (b - a) * (1 - np.cos(np.pi * s)) / 2


class TileRenderer:
    """Frames of one camera, rendered into the tiles of one offscreen buffer and read back
    together. Reading pixels waits for the GPU (llvmpipe here) to finish: once per frame it was
    most of an episode's time; once per TILES^2 frames it is nothing. The pixels are those
    `mujoco.Renderer` gives, frame for frame (tested). MuJoCo's public rendering API only."""

    def __init__(self, model, camera: str, size: int = IMAGE, tiles: int = TILES):
        import mujoco

        self.mujoco, self.model, self.size, self.tiles = mujoco, model, size, tiles
        side = size * tiles
        self.gl = mujoco.GLContext(side, side)
        self.gl.make_current()
        self.context = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_150)
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self.context)
        self.scene = mujoco.MjvScene(model, maxgeom=1000)
        self.option, self.perturb, self.camera = mujoco.MjvOption(), mujoco.MjvPerturb(), mujoco.MjvCamera()
        self.camera.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self.camera.fixedcamid = model.camera(camera).id
        self.buffer = np.empty((side, side, 3), np.uint8)
        self.pending = 0  # frames rendered into the buffer, not yet read
        self.done: list[np.ndarray] = []

    def render(self, data) -> None:
        """Draw the scene as it is now into the next free tile (the geoms' colours as they are now)."""
        mj = self.mujoco
        if self.pending == self.tiles ** 2:
            self._read()
        self.gl.make_current()  # each World has its own GL context
        mj.mjv_updateScene(self.model, data, self.option, self.perturb, self.camera, mj.mjtCatBit.mjCAT_ALL,
                           self.scene)
        row, col = divmod(self.pending, self.tiles)
        mj.mjr_render(mj.MjrRect(col * self.size, row * self.size, self.size, self.size), self.scene, self.context)
        self.pending += 1

    def _read(self) -> None:
        self.gl.make_current()
        self.mujoco.mjr_readPixels(self.buffer, None, self.mujoco.MjrRect(0, 0, *self.buffer.shape[1::-1]),
                                   self.context)
        # OpenGL's rows run bottom up: tile row r (counted from the bottom, as rendered) is buffer
        # rows r*size .. (r+1)*size, each tile upside down
        grid = self.buffer.reshape(self.tiles, self.size, self.tiles, self.size, 3)[:, ::-1]
        self.done.extend(grid.transpose(0, 2, 1, 3, 4).reshape(-1, self.size, self.size, 3)[:self.pending].copy())
        self.pending = 0

    def frames(self) -> np.ndarray:
        """[K, size, size, 3] uint8: every frame rendered since the last call, in order."""
        if self.pending:
            self._read()
        out, self.done = np.stack(self.done), []
        return out


class World:
    """One material's scene, compiled once and reused for every episode on it."""

    def __init__(self, material_name: str):
        import mujoco

        self.mujoco = mujoco
        self.material = material(material_name)
        self.coarse, self.fine = height_maps(material_name)
        self.model = mujoco.MjModel.from_xml_string(scene_xml(self.material.relief, self.material.friction))
        surface, look = self.model.hfield("surface"), self.model.hfield("look")
        # row i at y = (2i / (n - 1) - 1) * HALF, as the fine map
        self.model.hfield_data[surface.adr[0]: surface.adr[0] + COARSE ** 2] = self.coarse.ravel()
        self.model.hfield_data[look.adr[0]: look.adr[0] + VISUAL ** 2] = resize(self.fine, VISUAL).ravel()
        look = appearance(material_name)
        tex = self.model.texture("look")
        self.model.tex_data[tex.adr[0]: tex.adr[0] + look.size] = look.ravel()
        self.data = mujoco.MjData(self.model)
        try:
            self.renderer = TileRenderer(self.model, "scene")
        except Exception as err:  # mujoco picks its GL backend when first imported
            raise RuntimeError(f"the touch world cannot render headless ({err}); mujoco was imported before "
                               f"multisense set MUJOCO_GL=egl: set MUJOCO_GL=egl in the environment, or import "
                               f"multisense.data.world before mujoco (MUJOCO_GL is now "
                               f"{os.environ.get('MUJOCO_GL')!r})") from err
        m = self.model
        self.ids = {n: mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, n)
                    for n in ("surface", "pad_l", "pad_r", "gel_l", "gel_r", "occluder")}
        self.pad_body_offset = np.array([-FINGER_X, 0.0, FINGER_Z + PAD_Z - PAD_HALF])  # the left pad's face, from the wrist
        self.hand = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, "hand")
        self.hand_mass = float(m.body_subtreemass[self.hand])

    def surface_height(self, x: float, y: float) -> float:
        """The highest point of the contact surface (the coarse map MuJoCo collides with) under the pad."""
        win = tactile_render.surface_window(self.coarse, self.material.relief, HALF, (x, y), PAD, 8)
        return float(win.max())

    def pad_forces(self) -> np.ndarray:
        """[2, 3]: the force (N, world x y z) of the surface on the left and on the right pad now.
        Each contact's force is in its contact frame (with elliptic cones and condim 3 its three
        constraint forces: normal, then the two tangential ones, what mj_contactForce reports),
        rotated to the world by the contact's frame (rows: the normal, then the tangents)."""
        d = self.data
        out = np.zeros((2, 3))
        if not d.ncon:
            return out
        geoms, rows = d.contact.geom, d.contact.efc_address  # [ncon, 2], [ncon] (-1: excluded)
        on_surface = (geoms == self.ids["surface"]).any(1) & (rows >= 0)
        local = d.efc_force[rows[on_surface, None] + np.arange(3)]  # [n, 3] in the contact frame
        world = np.einsum("nk,nkj->nj", local, d.contact.frame[on_surface].reshape(-1, 3, 3))
        # the frame's normal points from geom 1 to geom 2: the force on geom 2
        world *= np.where(geoms[on_surface, 0] == self.ids["surface"], 1.0, -1.0)[:, None]
        for k, pad in enumerate(("gel_l", "gel_r")):
            out[k] = world[(geoms[on_surface] == self.ids[pad]).any(1)].sum(0)
        return out

    def _render(self, occluded: bool) -> None:
        self.model.geom_rgba[self.ids["occluder"], 3] = 1.0 if occluded else 0.0  # read by the scene update
        self.renderer.render(self.data)
        self.model.geom_rgba[self.ids["occluder"], 3] = 0.0

    def run(self, spec: EpisodeSpec, rng: np.random.Generator) -> dict[str, np.ndarray]:
        mj, m, d = self.mujoco, self.model, self.data
        mj.mj_resetData(m, d)
        steps = int(round(spec.seconds * PHYSICS_RATE))
        x0, y0 = spec.start
        dx, dy = np.cos(spec.direction) * spec.distance, np.sin(spec.direction) * spec.distance
        # the hand is at the carriage's origin; the pad's face is pad_body_offset below and beside it
        off = self.pad_body_offset
        # the highest point under either pad (z = 0: the texture's lowest); the fingers' springs share the load
        z_face_contact = max(self.surface_height(x0, y0), self.surface_height(x0 - 2 * off[0], y0))
        t_touch, t_press, t_slide, t_lift = spec.times
        hover = 0.03

        def target(t: float) -> tuple[float, float, float, int]:
            zc = z_face_contact - off[2] - 0.06  # carriage joint z that puts the pad face on the surface
            if t < t_touch:
                return x0 - off[0], y0, _smooth(zc + hover + 0.005, zc + 0.004, t / t_touch), 0
            if t < t_press:
                return x0 - off[0], y0, _smooth(zc + 0.004, zc, (t - t_touch) / (t_press - t_touch)), 1
            if t < t_slide:
                return x0 - off[0], y0, _smooth(zc, zc - spec.press, (t - t_press) / (t_slide - t_press)), 2
            if t < t_lift:
                s = (t - t_slide) / (t_lift - t_slide)
                return (_smooth(x0, x0 + dx, s) - off[0], _smooth(y0, y0 + dy, s), zc - spec.press, 3)
            s = (t - t_lift) / max(spec.seconds - t_lift, 1e-6)
            return x0 + dx - off[0], y0 + dy, _smooth(zc - spec.press, zc + hover, s * 1.5), 4

        qz0 = target(0.0)[2]
        d.qpos[:3] = [target(0.0)[0], target(0.0)[1], qz0]
        d.ctrl[:3] = d.qpos[:3]
        for _ in range(int(0.3 * PHYSICS_RATE)):  # settle the finger springs before the clock starts
            mj.mj_step(m, d)
        d.time = 0.0

        wrench = np.zeros((steps, 6), np.float32)
        pad_xy = np.zeros((steps, 2))
        pad_z = np.zeros(steps)
        force = np.zeros(steps)  # normal force on the left pad (the tactile sensor's)
        force_both = np.zeros(steps)  # normal force on both pads
        tangential = np.zeros(steps)  # tangential force on both pads
        vel = np.zeros(steps)
        phase = np.zeros(steps, np.int8)
        # frame k of a stream at rate r is taken at the physics step nearest k / r seconds
        cam_steps = set(np.round(np.arange(int(round(spec.seconds * CAMERA_RATE))) * PHYSICS_RATE / CAMERA_RATE)
                        .astype(int).tolist())
        tac_steps = set(np.round(np.arange(int(round(spec.seconds * TACTILE_RATE))) * PHYSICS_RATE / TACTILE_RATE)
                        .astype(int).tolist())
        # frames go to the renderer's tiles in this order: per camera step the open view, then the
        # occluded one from the first contact on (before it, the occluded stream repeats the open view)
        order, tactile = [], []
        tint = np.asarray(spec.tint, np.float32)
        contact_seen = False
        reference = None
        along = np.array([np.cos(spec.direction), np.sin(spec.direction)])
        reach = spec.pull / XY_KP  # the drive's force is XY_KP times the target's distance from the hand
        released = None  # where the hand is when the drive stops pulling (the lift's start)
        for i in range(steps):
            t = i / PHYSICS_RATE
            tx, ty, tz, ph = target(t)
            if ph == 3:  # the target's lead along the slide capped at the pull; across it, as commanded
                lead = (tx - d.qpos[0]) * along[0] + (ty - d.qpos[1]) * along[1]
                tx, ty = np.array([tx, ty]) + (np.clip(lead, -reach, reach) - lead) * along
            elif ph == 4:
                if released is None:
                    released = d.qpos[:2].copy()
                tx, ty = released
            d.ctrl[:3] = [tx, ty, tz]
            mj.mj_step(m, d)
            phase[i] = ph
            wrench[i] = d.sensordata[:6]
            pad = d.geom_xpos[self.ids["pad_l"]]
            pad_xy[i] = pad[:2]
            pad_z[i] = pad[2] - PAD_HALF  # its face
            # normal: along the patch's normal (world z); tangential: in the patch's plane
            pads = self.pad_forces()
            fl, fr = pads[:, 2]
            force[i], force_both[i] = fl, fl + fr
            tangential[i] = np.hypot(*pads[:, :2].sum(0))
            vel[i] = float(np.hypot(d.qvel[0], d.qvel[1]))
            contact_seen = contact_seen or fl + fr > 0
            if i in cam_steps:
                self._render(occluded=False)
                order.append(contact_seen)
                if contact_seen:
                    self._render(occluded=True)
            if i in tac_steps:
                heights = tactile_render.surface_window(self.fine, self.material.relief, HALF, tuple(pad_xy[i]),
                                                        PAD, IMAGE)
                frame = tactile_render.render_frame(heights, pad_z[i], fl, rng=rng)
                if reference is None:
                    reference = tactile_render.render_frame(heights, pad_z[i], 0.0, rng=rng)
                tactile.append(frame)
        noise = np.concatenate([rng.normal(0, 0.02, (steps, 3)), rng.normal(0, 5e-4, (steps, 3))], 1)
        touching = force_both > 0.05
        slipping = touching & (vel > SLIP_SPEED)
        ever = np.maximum.accumulate(touching)
        lifted = ever & ~touching & (phase == 4)
        wave = audio_synth.synthesize(pad_xy, np.where(touching, force, 0.0) * (vel > 0.002), self.fine,
                                      self.material.relief, HALF, physics_rate=PHYSICS_RATE, audio_rate=AUDIO_RATE,
                                      rng=rng)
        to8 = lambda frames: (np.stack(frames) * 255).round().astype(np.uint8)  # noqa: E731
        shot = iter((self.renderer.frames().astype(np.float32) * tint).clip(0, 255).astype(np.uint8))
        camera, camera_occ = [], []
        for blocked in order:
            camera.append(next(shot))
            camera_occ.append(next(shot) if blocked else camera[-1])
        return {
            "camera": np.stack(camera), "camera_occluded": np.stack(camera_occ),
            "tactile": to8(tactile), "tactile_reference": to8([reference])[0],
            "wrench": (wrench + noise).astype(np.float32), "audio": wave,
            "touching": touching, "slipping": slipping, "lifted": lifted, "phase": phase,
            "normal_force": force_both.astype(np.float32), "tangential_force": tangential.astype(np.float32),
            "pad_speed": vel.astype(np.float32),
        }
