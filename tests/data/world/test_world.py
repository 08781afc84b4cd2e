import dataclasses
import os
import warnings

import numpy as np
import pytest

from multisense.data.world import NAMES, cache_key, episode_dir, generate, load_episode, material, simulate
from multisense.data.world import episodes as episodes_module
from multisense.data.world import materials as materials_module
from multisense.data.world import sim as sim_module
from multisense.data.world.sim import (
    AUDIO_RATE,
    CAMERA_RATE,
    PHASES,
    PHYSICS_RATE,
    TACTILE_RATE,
    EpisodeSpec,
    World,
    stream_layout,
)
from multisense.data.world.tasks import SLIP_DISTANCE, slid


@pytest.fixture(scope="module")
def episode():
    return simulate(seed=3, index=1, seconds=3.0)


def test_streams_come_at_their_native_rates(episode):
    arrays, spec = episode
    s = spec["seconds"]
    assert arrays["camera"].shape == (int(s * CAMERA_RATE), 32, 32, 3) and arrays["camera"].dtype == np.uint8
    assert arrays["camera_occluded"].shape == arrays["camera"].shape
    assert arrays["tactile"].shape == (int(s * TACTILE_RATE), 32, 32, 3)
    assert arrays["wrench"].shape == (int(s * PHYSICS_RATE), 6)
    assert arrays["audio"].shape == (int(s * AUDIO_RATE),) and np.abs(arrays["audio"]).max() <= 1
    for key in ("touching", "slipping", "lifted", "phase", "normal_force", "tangential_force", "pad_speed"):
        assert arrays[key].shape == (int(s * PHYSICS_RATE),)
    assert spec["material"] == NAMES[1]
    assert {k: (v.shape, v.dtype.type) for k, v in arrays.items()} == stream_layout(s)  # what the cache checks


def test_the_episode_has_every_event_in_order(episode, slides):
    arrays, spec = episode
    touching, slipping, lifted, phase = arrays["touching"], arrays["slipping"], arrays["lifted"], arrays["phase"]
    assert set(np.unique(phase).tolist()) == set(range(len(PHASES)))
    assert not touching[phase == 0].any()  # approach: free motion
    assert touching[phase == 2].mean() > 0.9  # pressing
    first_touch, first_lift = np.argmax(touching), np.argmax(lifted)
    assert lifted.any() and first_lift > first_touch and not touching[-100:].any()
    # its pull (1.7 N) is less than brick's friction holds (0.8 x about 3.5 N): the finger holds
    # while pulled, and as the load comes off at lift-off
    assert spec["pull"] < 2 and not slipping.any()
    for pulled in slides.values():  # pulled past friction: the finger slips, once pulled
        assert pulled["slipping"][pulled["phase"] == 3].any() and not pulled["slipping"][pulled["phase"] <= 2].any()


def test_the_world_is_deterministic_for_a_seed(episode):
    again, spec = simulate(seed=3, index=1, seconds=3.0)
    for key, value in episode[0].items():
        assert np.array_equal(value, again[key]), key
    other, _ = simulate(seed=4, index=1, seconds=3.0)
    assert not np.array_equal(other["wrench"], again["wrench"])


def test_tactile_frames_show_no_deformation_without_contact(episode):
    arrays, _ = episode
    steps = np.round(np.arange(arrays["tactile"].shape[0]) * PHYSICS_RATE / TACTILE_RATE).astype(int)
    in_contact = arrays["normal_force"][steps] > 0
    diff = np.abs(arrays["tactile"].astype(int) - arrays["tactile_reference"].astype(int))
    free = diff[~in_contact].reshape((~in_contact).sum(), -1)
    assert (~in_contact).sum() > 20 and free.max() <= 8  # sensor noise only (sd 0.004 ~ 1 grey level)
    pressed = diff[arrays["phase"][steps] == 2].mean()
    assert pressed > 5 * free.mean()


def test_force_torque_in_free_motion_equals_the_hands_weight(episode):
    arrays, _ = episode
    world = World(NAMES[1])
    weight = world.hand_mass * 9.81
    hold = arrays["wrench"][25:100]  # the first 0.05-0.2 s: the hand hangs nearly still
    assert abs(hold[:, 2].mean() - weight) < 0.05 * weight
    assert np.abs(hold[:, :2].mean(0)).max() < 0.05 and np.abs(hold[:, 3:].mean(0)).max() < 0.005
    assert hold[:, 2].std() < 0.05  # the noise the sensor adds: sd 0.02 N


def _world(name):
    """`simulate`'s world of material `name`: each scene is compiled once per test process."""
    if name not in episodes_module._WORLDS:
        episodes_module._WORLDS[name] = World(name)
    return episodes_module._WORLDS[name]


# A 25 mm slide in 0.8 s (about 3 cm/s, an episode's speed), short of a whole episode, pulled by up
# to 50 N: more than any surface's friction holds
SLIDE = dict(start=(-0.005, -0.003), direction=0.5, distance=0.025, press=0.002, pull=50.0,
             times=(0.25, 0.35, 0.5, 1.3), tint=(1.0, 1.0, 1.0), seconds=1.5)


@pytest.fixture(scope="module")
def slides():
    return {name: _world(name).run(EpisodeSpec(material=name, **SLIDE), np.random.default_rng(0)) for name in NAMES}


def _wrist_load(arrays):
    """[T] N: how much less the wrist carries than while the hand hangs free (its first 0.05-0.2 s)."""
    z = arrays["wrench"][:, 2]
    return z[25:100].mean() - z


def _steady(arrays):
    """[T] bool: the middle half of the slide, where the finger slips (the carriage's lag is taken up)."""
    slide = np.flatnonzero(arrays["phase"] == PHASES.index("slide"))
    quarter = len(slide) // 4
    middle = np.zeros(len(arrays["phase"]), bool)
    middle[slide[quarter:-quarter]] = True
    return middle & arrays["slipping"]


def _check_friction(ratios: dict[str, float]) -> None:
    by_mu = sorted(NAMES, key=lambda n: material(n).friction)
    assert all(ratios[a] < ratios[b] for a, b in zip(by_mu, by_mu[1:])), ratios
    # the smooth surface's relief is too gentle to climb: friction alone
    assert ratios["smooth"] == pytest.approx(material("smooth").friction, rel=0.2), ratios


def test_a_slide_measures_each_materials_friction(slides):
    steady = {name: _steady(arrays) for name, arrays in slides.items()}
    assert all(s.sum() > 100 for s in steady.values()), {n: s.sum() for n, s in steady.items()}
    wrist = {name: np.linalg.norm(arrays["wrench"][steady[name], :2], axis=1).sum()
             / _wrist_load(arrays)[steady[name]].sum() for name, arrays in slides.items()}
    _check_friction(wrist)  # what the wrist feels
    pads = {name: arrays["tangential_force"][steady[name]].sum() / arrays["normal_force"][steady[name]].sum()
            for name, arrays in slides.items()}
    _check_friction(pads)  # what the world reports
    assert all(pads[n] == pytest.approx(wrist[n], rel=0.1) for n in NAMES), (pads, wrist)


def test_the_pads_normal_force_is_the_load_the_wrist_loses(slides):
    for name, arrays in slides.items():
        load, normal = _wrist_load(arrays), arrays["normal_force"]
        pressed = np.isin(arrays["phase"], (PHASES.index("press"), PHASES.index("slide")))
        assert normal[pressed].mean() == pytest.approx(load[pressed].mean(), rel=0.2), name
        assert normal.max() == pytest.approx(load.max(), rel=0.2), name


def test_a_pressed_pad_rests_on_the_surface():
    """Pressed into the surface and left there, the pads' load settles and stays: with a less damped
    contact the pads bounce on their fingers' springs, the load swinging and lost for single steps,
    and a pull drags a pad that friction should hold a little further each time."""
    import mujoco

    for name in NAMES:
        world = _world(name)
        m, d = world.model, world.data
        mujoco.mj_resetData(m, d)
        off, x, y = world.pad_body_offset, 0.004, -0.002
        contact = max(world.surface_height(x, y), world.surface_height(x - 2 * off[0], y)) - off[2] - 0.06
        d.qpos[:3] = [x - off[0], y, contact + 0.001]  # the pads 1 mm above the surface
        d.ctrl[:3] = [x - off[0], y, contact - 0.002]  # the hand commanded 2 mm into it
        loads = []
        for _ in range(int(0.8 * PHYSICS_RATE)):
            mujoco.mj_step(m, d)
            loads.append(world.pad_forces()[:, 2].sum())
        settled = np.array(loads[len(loads) // 2:])
        assert settled.min() > 2 and settled.std() < 0.02, (name, settled.min(), settled.std())


def _pulled(name: str, press: float, pull: float) -> tuple[float, float]:
    """(how far the pads slid over the surface (m), mu times their mean load while pulled (N)) in
    the tests' slide on `name`, with this press and pull."""
    arrays = _world(name).run(EpisodeSpec(material=name, **dict(SLIDE, press=press, pull=pull)),
                              np.random.default_rng(0))
    pulling = arrays["phase"] == PHASES.index("slide")
    return slid(arrays), material(name).friction * float(arrays["normal_force"][pulling].mean())


def test_a_pull_slides_the_finger_only_past_what_friction_holds():
    runs = {(name, 0.002, 2.0): _pulled(name, 0.002, 2.0) for name in NAMES}  # one press, one pull
    runs.update({("grass", press, 2.5): _pulled("grass", press, 2.5) for press in (0.001, 0.003)})
    runs.update({(name, 0.002, 6.0): _pulled(name, 0.002, 6.0) for name in NAMES})
    slips = {run: distance >= SLIP_DISTANCE for run, (distance, _) in runs.items()}
    # at one press and pull the smooth surface lets the finger slip, the rougher ones hold it
    assert [slips[(name, 0.002, 2.0)] for name in NAMES] == [name == "smooth" for name in NAMES], runs
    assert slips[("grass", 0.001, 2.5)] and not slips[("grass", 0.003, 2.5)], runs  # a firmer press holds
    assert all(slips[(name, 0.002, 6.0)] for name in NAMES), runs
    for (name, press, pull), (distance, holds) in runs.items():
        # the finger slides where the pull exceeds mu x the load, a long way; held, it gives < 0.5 mm
        assert (pull > holds) == slips[(name, press, pull)], (name, press, pull, holds)
        assert distance > 0.01 if pull > holds else distance < 0.0005, (name, press, pull, distance)


def test_pad_forces_are_the_contacts_forces_in_the_world_frame():
    import mujoco

    world = _world("brick")
    m, d = world.model, world.data
    mujoco.mj_resetData(m, d)
    off = world.pad_body_offset
    x, y = 0.004, -0.002
    d.qpos[:3] = [x - off[0], y, max(world.surface_height(x, y), world.surface_height(x - 2 * off[0], y))
                  - off[2] - 0.06 - 0.0004]  # the pads 0.4 mm into the surface
    d.qvel[:2] = [0.03, 0.01]  # sliding: friction too
    mujoco.mj_forward(m, d)
    expected, force = np.zeros((2, 3)), np.zeros(6)
    for j in range(d.ncon):
        contact = d.contact[j]
        for k, pad in enumerate(("gel_l", "gel_r")):
            if set(contact.geom.tolist()) == {world.ids["surface"], world.ids[pad]}:
                mujoco.mj_contactForce(m, d, j, force)
                on_second = contact.frame.reshape(3, 3).T @ force[:3]  # rows: normal, tangents
                expected[k] += on_second if contact.geom[1] == world.ids[pad] else -on_second
    assert (expected[:, 2] > 0.1).all() and np.abs(expected[:, :2]).max() > 0.01
    assert np.allclose(world.pad_forces(), expected, atol=1e-9)


def test_the_camera_is_blocked_from_the_first_contact_on(episode):
    arrays, _ = episode
    steps = np.round(np.arange(arrays["camera"].shape[0]) * PHYSICS_RATE / CAMERA_RATE).astype(int)
    before = steps < np.argmax(arrays["normal_force"] > 0)
    cam, occ = arrays["camera"].astype(int), arrays["camera_occluded"].astype(int)
    assert np.array_equal(cam[before], occ[before])
    pressing = np.isin(arrays["phase"][steps], (2, 3))  # the hand low over the patch: the plate covers the view
    assert np.abs(cam[pressing] - occ[pressing]).mean() > 20


def test_episodes_are_cached_by_seed_and_version(tmp_path, monkeypatch):
    paths = generate(2, seed=5, seconds=1.0, cache_dir=tmp_path, workers=1)
    assert paths[0].parent.parent.name == cache_key()
    stamp = [p.stat().st_mtime_ns for p in paths]
    arrays, spec = load_episode(paths[1])
    direct, _ = simulate(seed=5, index=1, seconds=1.0)
    assert all(np.array_equal(arrays[k], direct[k]) for k in direct) and spec["seconds"] == 1.0
    assert [p.stat().st_mtime_ns for p in generate(2, seed=5, seconds=1.0, cache_dir=tmp_path)] == stamp  # a hit
    longer = generate(1, seed=5, seconds=2.0, cache_dir=tmp_path, workers=1)[0]  # not the 1 s episode
    assert load_episode(longer)[1]["seconds"] == 2.0 and longer.parent != paths[0].parent
    written = cache_key()
    monkeypatch.setattr(episodes_module, "VERSION", "v-test")
    assert generate(1, seed=5, seconds=1.0, cache_dir=tmp_path, workers=1)[0].parent != paths[0].parent
    with pytest.raises(ValueError, match=f"touch-world '{written}'"):
        load_episode(paths[0])
    with pytest.raises(ValueError, match="seconds"):
        episode_dir(5, tmp_path, seconds=1.0000001)  # the folder's name would round it


def test_the_cache_key_changes_with_what_changes_an_episode(tmp_path, monkeypatch):
    import mujoco

    before = episode_dir(5, tmp_path)
    changed = [dataclasses.replace(m, friction=m.friction + 0.1) if m.name == "grass" else m
               for m in materials_module.MATERIALS]
    with monkeypatch.context() as patch:
        patch.setattr(materials_module, "MATERIALS", tuple(changed))
        assert material("grass").friction == pytest.approx(0.7)  # the simulation reads it too
        assert episode_dir(5, tmp_path) != before
    with monkeypatch.context() as patch:
        patch.setattr(mujoco, "__version__", "0.0.0")
        assert episode_dir(5, tmp_path) != before
    with monkeypatch.context() as patch:
        patch.setattr(sim_module, "CONTACT_SOLREF", (0.02, 1.0))
        assert episode_dir(5, tmp_path) != before
    with monkeypatch.context() as patch:
        patch.setattr(sim_module, "TACTILE_RATE", 30.0)
        assert episode_dir(5, tmp_path) != before
    assert episode_dir(5, tmp_path) == before  # and nothing else moves it


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_a_truncated_cached_episode_is_named_and_simulated_again(tmp_path):
    paths = generate(2, seed=5, seconds=1.0, cache_dir=tmp_path, workers=1)
    fresh, fresh_spec = simulate(seed=5, index=1, seconds=1.0)
    with open(paths[1], "r+b") as f:
        f.truncate(os.path.getsize(paths[1]) // 2)
    with pytest.warns(UserWarning, match=str(paths[1])):
        arrays, spec = load_episode(paths[1])
    assert spec == fresh_spec and set(arrays) == set(fresh)
    assert all(np.array_equal(arrays[k], fresh[k]) for k in fresh)
    assert _names(paths[1].parent) == ["000000.safetensors", "000001.safetensors"]  # no temporary file left
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rewritten whole: no warning now
        again, _ = load_episode(paths[1])
    assert all(np.array_equal(again[k], fresh[k]) for k in fresh)

    with open(paths[0], "r+b") as f:
        f.truncate(100)
    with pytest.warns(UserWarning, match=str(paths[0])):
        generate(2, seed=5, seconds=1.0, cache_dir=tmp_path, workers=1)
    first, _ = simulate(seed=5, index=0, seconds=1.0)
    assert all(np.array_equal(load_episode(paths[0])[0][k], first[k]) for k in first)


def test_a_cached_episode_with_wrong_arrays_is_simulated_again(tmp_path):
    path = generate(1, seed=5, seconds=1.0, cache_dir=tmp_path, workers=1)[0]
    arrays, spec = load_episode(path)
    short = dict(arrays, wrench=arrays["wrench"][:100])
    episodes_module._write(path, short, spec, cache_key())
    with pytest.warns(UserWarning, match=f"{path}.*'wrench'"):
        again, _ = load_episode(path)
    assert again["wrench"].shape == arrays["wrench"].shape and np.array_equal(again["wrench"], arrays["wrench"])
    elsewhere = tmp_path / "copy.safetensors"  # outside the cache's layout: it cannot know which episode it was
    episodes_module._write(elsewhere, short, spec, cache_key())
    with pytest.raises(ValueError, match=str(elsewhere)):
        load_episode(elsewhere)


def test_tiled_frames_equal_mujocos_own_renderer():
    import mujoco

    from multisense.data.world.sim import IMAGE, TILES, TileRenderer

    world = World(NAMES[2])
    reference = mujoco.Renderer(world.model, IMAGE, IMAGE)
    tiles = TileRenderer(world.model, "scene", tiles=2)  # 4 tiles: a second batch, and rows above the first
    expected = []
    for k in range(6):
        world.data.qpos[:3] = [0.002 * k, -0.001 * k, 0.004 * k]
        mujoco.mj_forward(world.model, world.data)
        tiles.render(world.data)
        reference.update_scene(world.data, camera="scene")
        expected.append(reference.render().copy())
    frames = tiles.frames()
    assert frames.shape == (6, IMAGE, IMAGE, 3) and TILES ** 2 >= 180  # a 3 s episode's frames in one batch
    assert np.array_equal(frames, np.stack(expected))
    assert not np.array_equal(frames[0], frames[5])
