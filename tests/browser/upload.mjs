// Usage: node upload.mjs URL IMAGE SCREENSHOT
// Opens the page in headless Chromium, uploads IMAGE, waits for the findings
// list and the heatmap, saves a screenshot, prints what the page shows as JSON.
import { chromium } from "playwright-core";

const [url, image, screenshot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1000, height: 1100 } });
  await page.goto(url);
  await page.setInputFiles("#file", image);
  await page.waitForSelector("#result:not([hidden])", { timeout: 60000 });
  await page.waitForFunction(() => document.getElementById("heatmap").naturalWidth > 0);
  const shown = await page.evaluate(() => ({
    findings: [...document.querySelectorAll("#findings li .name")].map(e => e.textContent),
    probabilities: [...document.querySelectorAll("#findings li .p")].map(e => Number(e.textContent)),
    flag: document.getElementById("flag").textContent,
    heatmapWidth: document.getElementById("heatmap").naturalWidth,
    note: document.querySelector(".note").textContent,
  }));
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(JSON.stringify(shown));
} finally {
  await browser.close();
}
