// Retrying after a failure: the delay doubles from `firstMs` up to `maxMs`, and resets once things work again.

export class Retry {
  constructor(run, { firstMs, maxMs }) {
    this.run = run;
    this.firstMs = firstMs;
    this.maxMs = maxMs;
    this.failures = 0; // since the last success
    this.timer = null;
  }

  // Run again after the next delay; returns that delay in milliseconds.
  schedule() {
    this.cancel();
    const delay = Math.min(this.firstMs * 2 ** this.failures, this.maxMs);
    this.failures += 1;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.run();
    }, delay);
    return delay;
  }

  cancel() {
    clearTimeout(this.timer);
    this.timer = null;
  }

  succeeded() {
    this.failures = 0;
  }
}
