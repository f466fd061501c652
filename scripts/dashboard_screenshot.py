"""Screenshot of /socket-dashboard after two minutes of a small varying load (docs/dashboard.png).

.venv/bin/python scripts/dashboard_screenshot.py docs/dashboard.png

One optimized node on loopback (no Redis), 40 users, between 0 and 38 connections and roughly
20-80 chats per second following two slow sine waves, the page refreshing every 2 s in Debian's
Chromium (Playwright with executable_path). Takes about 2.5 minutes.
"""

from __future__ import annotations

import asyncio
import math
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from playwright.async_api import async_playwright

from lab.servers import ServerProcess, create_users
from tests.sio import Client

CHROMIUM = "/usr/bin/chromium"
SECONDS = 130


async def main(out: str) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="caplab-shot-"))
    users = create_users(tmp / "lab.db", 4, 10)
    server = ServerProcess(
        "optimized", tmp / "lab.db", {"metrics_interval_ms": 2000}, {"REDIS_URL": ""}, log_path=tmp / "server.log"
    ).start()
    clients: list[Client] = []
    rng = random.Random(14)
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            page = await browser.new_page(viewport={"width": 1280, "height": 660})
            await page.goto(server.url + "/socket-dashboard")
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            while (t := loop.time() - t0) < SECONDS:
                target = int(20 + 18 * math.sin(t / 20)) if t > 10 else 0
                while len(clients) < target:
                    clients.append(await Client.connect(server.url, users[len(clients)]["token"]))
                while len(clients) > target:
                    await clients.pop().close()
                rate = 20 + 60 * (0.5 + 0.5 * math.sin(t / 13))  # chats per second
                for _ in range(int(rate / 4)):
                    if clients:
                        await rng.choice(clients).send("chat", {"text": "hello " * rng.randint(1, 30)})
                await asyncio.sleep(0.25)
            await page.screenshot(path=out)
            await browser.close()
    finally:
        await asyncio.gather(*(c.close() for c in clients))
        server.stop()
    print(f"wrote {out}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: scripts/dashboard_screenshot.py OUT.png")
    asyncio.run(main(sys.argv[1]))
