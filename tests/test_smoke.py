import httpx
import nats


async def test_servers_start(nats_env, pb_env):
    assert httpx.get(f"{pb_env.url}/api/health").status_code == 200
    nc = await nats.connect(nats_env.url, user_credentials=str(nats_env.layout.sys_user_creds))
    reply = await nc.request("$SYS.REQ.SERVER.PING", b"", timeout=2)
    assert b"server" in reply.data
    await nc.close()
