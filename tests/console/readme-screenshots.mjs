// Takes the documentation's screenshots (docs/console-*.png) of a running fleet:
// start `scripts/run-example 40`, then, while it sends:
//
//   node tests/console/readme-screenshots.mjs http://127.0.0.1:9464 example docs
//
// Not part of the tests (tests/console/console.test.mjs is).
import { chromium } from 'playwright-core';

const [base, channel, out] = process.argv.slice(2);
if (!out) {
  console.error('usage: readme-screenshots.mjs BASE CHANNEL OUT_DIR');
  process.exit(2);
}
const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 420 } });
  await page.goto(`${base}/`);
  await page.waitForSelector('#channels tbody tr[data-state="ready"]');
  await page.waitForTimeout(2500);
  await page.screenshot({ path: `${out}/console-fleet.png` });
  await page.setViewportSize({ width: 1100, height: 760 });
  await page.goto(`${base}/channels/${channel}#fields=sine_wave,ramp,noise&window=10`);
  await page.waitForTimeout(11000);
  await page.screenshot({ path: `${out}/console-channel.png` });
} finally {
  await browser.close();
}
