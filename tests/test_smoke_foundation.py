from tests.world import World


async def test_world_builds(world: World) -> None:
    assert world.home.property_id != world.other.property_id
