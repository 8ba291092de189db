"""Rendering: frame geometry and colours on a hand-built scene, video/PNG output, one real scene."""
from __future__ import annotations

import dataclasses

import imageio.v2 as imageio
import numpy as np
import pytest
import shapely

from blm_gym.data.scene import AgentType, DrivableArea, RoadMap, Scene, Trajectories, pad_polylines
from conftest import SHARED_DATA
from blm_gym.render import RenderConfig, Renderer, contact_sheet, render_frame, write_png, write_video
from blm_gym.render import draw
from blm_gym.sim.state import SimulatorState

EGO_XY = (30.0, 10.0)
PLAIN = RenderConfig(width=320, height=240, px_per_m=5.0, show_text=False, draw_lanes=False)


def make_scene(drivable=None, num_steps: int = 5) -> Scene:
    """Ego vehicle heading +x at EGO_XY; a vehicle 10 m north of it; a pedestrian 20 m west."""
    xs = np.array([EGO_XY[0], EGO_XY[0], EGO_XY[0] - 20.0])
    ys = np.array([EGO_XY[1], EGO_XY[1] + 10.0, EGO_XY[1]])
    t = np.arange(num_steps) * 0.1
    traj = Trajectories.from_states(
        x=xs[:, None] + 2.0 * t, y=np.repeat(ys[:, None], num_steps, 1), heading=np.zeros((3, num_steps)),
        speed=np.full((3, num_steps), 2.0), length=[4.0, 4.0, 0.8], width=[2.0, 2.0, 0.8],
        valid=np.ones((3, num_steps), bool),
    )
    if drivable is None:
        drivable = shapely.box(-100, -100, 100, 100)
    lanes, lane_mask = pad_polylines([np.array([[-50.0, 5.0], [80.0, 5.0]])])
    edges, edge_mask = pad_polylines([])
    road = RoadMap(lanes, lane_mask, edges, edge_mask, DrivableArea.from_geometry(drivable, resolution=1.0))
    return Scene("synthetic-0", "synthetic", 0.1, ("ego", "car", "ped"),
                 np.array([AgentType.VEHICLE, AgentType.VEHICLE, AgentType.PEDESTRIAN], np.int8), 0, traj, road)


def pixel_of(config: RenderConfig, x: float, y: float) -> tuple[int, int]:
    """(row, col) of world (x, y) when the view is centred on the ego; world y points up."""
    u = config.width / 2 + (x - EGO_XY[0]) * config.px_per_m
    v = config.height / 2 - (y - EGO_XY[1]) * config.px_per_m
    return int(v), int(u)


def test_frame_shape_dtype_and_ego_at_centre():
    scene = make_scene()
    frame = render_frame(SimulatorState.from_log(scene, 0), PLAIN)
    assert frame.shape == (240, 320, 3) and frame.dtype == np.uint8
    assert tuple(frame[pixel_of(PLAIN, *EGO_XY)]) == draw.EGO
    # y is up: the car 10 m north of the ego is drawn above it, in the vehicle colour.
    assert tuple(frame[pixel_of(PLAIN, EGO_XY[0], EGO_XY[1] + 10)]) == draw.TYPE_COLOURS[AgentType.VEHICLE]
    assert tuple(frame[pixel_of(PLAIN, EGO_XY[0] - 20, EGO_XY[1])]) == draw.TYPE_COLOURS[AgentType.PEDESTRIAN]
    assert tuple(frame[5, 5]) == draw.DRIVABLE


def test_scene_centre_view_moves_the_ego_off_centre():
    scene = make_scene()
    frame = render_frame(SimulatorState.from_log(scene, 0), dataclasses.replace(PLAIN, center="scene"))
    assert tuple(frame[120, 160]) != draw.EGO
    assert (frame == np.array(draw.EGO, np.uint8)).all(-1).any()


def test_collided_and_offroad_agents_are_marked():
    scene = make_scene()
    state = SimulatorState.from_log(scene, 0)
    car = pixel_of(PLAIN, EGO_XY[0], EGO_XY[1] + 10)
    plain = render_frame(state, PLAIN)
    flags = np.zeros_like(state.collision)
    flagged = dataclasses.replace(state, collision=flags.copy(), offroad=flags.copy())
    flagged.collision[1, 0], flagged.offroad[0, 0] = True, True  # the step's checks: car 1 hit, ego off-road
    flagged = render_frame(flagged, PLAIN)
    assert tuple(plain[car]) == draw.TYPE_COLOURS[AgentType.VEHICLE]
    assert tuple(flagged[car]) == draw.COLLISION
    is_orange = lambda f: (f == np.array(draw.OFFROAD, np.uint8)).all(-1).sum()  # noqa: E731
    assert is_orange(plain) == 0 and is_orange(flagged) > 0


def test_px_per_m_scales_boxes():
    scene = make_scene()
    state = SimulatorState.from_log(scene, 0)

    def ego_extent(s: float) -> tuple[int, int]:
        """Pixel count and horizontal extent (the ego heads +x) of the ego box, outline included."""
        frame = render_frame(state, dataclasses.replace(PLAIN, px_per_m=s))
        near = frame[120 - 3 * int(s):120 + 3 * int(s), 160 - 4 * int(s):160 + 4 * int(s)]
        box = ~(near == np.array(draw.DRIVABLE, np.uint8)).all(-1)
        cols = np.flatnonzero(box.any(0))
        return int(box.sum()), int(cols[-1] - cols[0] + 1)

    (n5, len5), (n10, len10) = ego_extent(5.0), ego_extent(10.0)
    assert abs(len5 - 4.0 * 5) <= 2 and abs(len10 - 4.0 * 10) <= 2  # 4 m long
    assert 3.3 < n10 / n5 < 4.7  # area grows with the square of the scale


def test_drivable_area_holes_and_islands():
    ring = shapely.box(-100, -100, 100, 100).difference(shapely.box(35, -20, 75, 20))
    island = shapely.box(50, -5, 60, 5)
    scene = make_scene(drivable=shapely.MultiPolygon([ring, island]))
    frame = render_frame(SimulatorState.from_log(scene, 0), PLAIN)
    assert tuple(frame[pixel_of(PLAIN, 20, 0)]) == draw.DRIVABLE
    assert tuple(frame[pixel_of(PLAIN, 40, -10)]) == draw.BACKGROUND  # the hole
    assert tuple(frame[pixel_of(PLAIN, 55, 0)]) == draw.DRIVABLE  # island inside the hole


def test_trajectories_drawn_only_where_masked_valid():
    scene = make_scene()
    state = SimulatorState.from_log(scene, 0)
    path = np.zeros((3, 4, 2))
    path[1] = np.c_[np.linspace(20, 50, 4), np.full(4, EGO_XY[1] - 12)]  # 10 m apart, south of everything
    mask = np.zeros((3, 4), bool)
    mask[1, 1:] = True  # the first point (x=20) is invalid: the segment 20..30 is not drawn
    drawn, skipped = pixel_of(PLAIN, 40, EGO_XY[1] - 12), pixel_of(PLAIN, 25, EGO_XY[1] - 12)
    base = render_frame(state, PLAIN)
    shown = render_frame(state, PLAIN, trajectories=path, trajectory_mask=mask)
    hidden = render_frame(state, PLAIN, trajectories=path, trajectory_mask=np.zeros((3, 4), bool))
    assert tuple(base[drawn]) == draw.DRIVABLE
    assert tuple(shown[drawn]) != draw.DRIVABLE
    assert tuple(shown[skipped]) == draw.DRIVABLE
    np.testing.assert_array_equal(hidden, base)


def test_logged_trails_and_text_overlay_change_the_frame():
    scene = make_scene(num_steps=40)
    state = SimulatorState.from_log(scene, 20)
    base = render_frame(state, PLAIN)
    trails = render_frame(state, dataclasses.replace(PLAIN, draw_trajectories=True))
    text = render_frame(state, dataclasses.replace(PLAIN, show_text=True))
    assert (trails != base).any(-1).sum() > 20
    assert (text[:30, :150] != base[:30, :150]).any()


def test_renderer_cache_follows_the_scene_and_the_view():
    a = make_scene(drivable=shapely.box(-100, -100, 1000, 100))
    b = make_scene(drivable=shapely.box(-10, -10, 10, 10))
    start = SimulatorState.from_log(a, 1)
    far = dataclasses.replace(start, sim=dataclasses.replace(start.sim, x=start.sim.x + 700.0))  # far beyond the map layer drawn for `start`
    renderer = Renderer(PLAIN)
    for state in (start, SimulatorState.from_log(b, 1), start, far):
        np.testing.assert_array_equal(renderer.render(state), render_frame(state, PLAIN))
    assert tuple(renderer.render(far)[5, 5]) == draw.DRIVABLE


def test_bad_inputs_name_the_problem():
    scene = make_scene()
    state = SimulatorState.from_log(scene, 0)
    with pytest.raises(ValueError, match="trajectories"):
        render_frame(state, PLAIN, trajectories=np.zeros((3, 4)))
    with pytest.raises(ValueError, match="center"):
        RenderConfig(center="car")


def frames(n: int, h: int = 48, w: int = 64) -> list[np.ndarray]:
    out = []
    for k in range(n):
        f = np.zeros((h, w, 3), np.uint8)
        f[:, : (k + 1) * w // n] = (200, 40, 40)
        out.append(f)
    return out


def test_write_video_roundtrip_and_atomic(tmp_path):
    path = write_video(iter(frames(7)), tmp_path / "clip.mp4", fps=10)
    reader = imageio.get_reader(path)
    back = [f for f in reader]
    reader.close()
    assert len(back) == 7 and back[0].shape == (48, 64, 3)
    assert abs(int(back[-1][24, 60, 0]) - 200) < 30  # the last frame is (almost) all red
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


def test_write_video_errors_leave_nothing(tmp_path):
    with pytest.raises(ValueError, match="no frames"):
        write_video([], tmp_path / "empty.mp4")
    with pytest.raises(ValueError, match="frame 1"):
        write_video(frames(1) + frames(1, h=32), tmp_path / "mixed.mp4")
    with pytest.raises(ValueError, match="uint8"):
        write_video([np.zeros((8, 8, 3), np.float32)], tmp_path / "float.mp4")
    assert list(tmp_path.iterdir()) == []


def test_write_png_roundtrip_and_atomic(tmp_path):
    frame = frames(3)[1]
    write_png(frame, tmp_path / "sub" / "f.png")
    np.testing.assert_array_equal(imageio.imread(tmp_path / "sub" / "f.png"), frame)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["f.png"]


def test_contact_sheet_tiles_row_major():
    fs = frames(5)
    sheet = contact_sheet(fs, cols=3, pad=2)
    assert sheet.shape == (2 * (48 + 2) + 2, 3 * (64 + 2) + 2, 3)
    np.testing.assert_array_equal(sheet[2 + 50:2 + 50 + 48, 2 + 66:2 + 66 + 64], fs[4])
    assert (sheet[2 + 50:2 + 50 + 48, 2 + 132:2 + 132 + 64] == 255).all()  # the empty sixth cell
    with pytest.raises(ValueError, match="expected"):
        contact_sheet(fs + frames(1, h=10), cols=3)


@pytest.mark.realdata
def test_real_nuscenes_scene_renders(tmp_path):
    root = SHARED_DATA / "nuscenes-mini"
    if not root.exists():
        pytest.skip(f"real data missing: {root} (set BLM_GYM_DATA to the shared data folder)")
    from blm_gym.data.scenarionet import ScenarioNetSource

    source = ScenarioNetSource(root)
    scene = source.load(list(source.scene_ids).index("scene-0103"))
    config = RenderConfig()
    renderer = Renderer(config)
    shots = [renderer.render(SimulatorState.from_log(scene, t)) for t in (0, scene.num_steps - 1)]
    for frame in shots:
        assert tuple(frame[config.height // 2, config.width // 2]) == draw.EGO
        share = lambda c: (frame == np.array(c, np.uint8)).all(-1).mean()  # noqa: E731
        assert share(draw.DRIVABLE) > 0.02 and share(draw.LANE) > 0.001  # map layer drawn
        assert share(draw.TYPE_COLOURS[AgentType.VEHICLE]) > 0
    write_png(contact_sheet(shots, cols=2), tmp_path / "scene-0103.png")
    assert (tmp_path / "scene-0103.png").stat().st_size > 1000


def test_show_blits_the_frame_to_a_window(monkeypatch):
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")  # a headless window
    scene = make_scene()
    renderer = Renderer(PLAIN)
    frame = renderer.render(SimulatorState.from_log(scene, 0))
    try:
        renderer.show(frame)
        shown = draw.pygame.image.tobytes(draw.pygame.display.get_surface(), "RGB")
        assert np.frombuffer(shown, np.uint8).reshape(frame.shape).tolist() == frame.tolist()
    finally:
        renderer.close()
