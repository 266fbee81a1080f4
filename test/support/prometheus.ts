/** One sample of the Prometheus text format: `name{label="value",...} number`. */
export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+-?\d+)?$/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?\s*/y;

/**
 * Parses the text exposition format (version 0.0.4) strictly: every line is a comment (`# HELP`,
 * `# TYPE`) or a sample, every sample's metric has a TYPE line before it, and any other line throws.
 */
export function parsePrometheus(text: string): Sample[] {
  const samples: Sample[] = [];
  const typed = new Set<string>();
  for (const line of text.split('\n')) {
    if (line === '') continue;
    if (line.startsWith('#')) {
      const type = /^# TYPE (\S+) (counter|gauge|histogram|summary|untyped)$/.exec(line);
      if (type) typed.add(type[1]!);
      else if (!/^# HELP \S+ /.test(line)) throw new Error(`not a HELP or TYPE line: ${line}`);
      continue;
    }
    const match = SAMPLE.exec(line);
    if (!match) throw new Error(`not a sample line: ${line}`);
    const [, name, labelText = '', raw] = match;
    const family = name!.replace(/_(bucket|sum|count|total|created)$/, '');
    if (!typed.has(name!) && !typed.has(family)) throw new Error(`sample without a TYPE line: ${line}`);
    const labels: Record<string, string> = {};
    LABEL.lastIndex = 0;
    while (LABEL.lastIndex < labelText.length) {
      const label = LABEL.exec(labelText);
      if (!label) throw new Error(`bad labels in: ${line}`);
      labels[label[1]!] = label[2]!.replace(/\\n/g, '\n').replace(/\\"/g, '"').replace(/\\\\/g, '\\');
    }
    // Values as Go's ParseFloat reads them (Prometheus): NaN and Inf in any case.
    const value = /^[+]?inf$/i.test(raw!) ? Infinity : /^-inf$/i.test(raw!) ? -Infinity : Number(raw);
    if (Number.isNaN(value) && !/^nan$/i.test(raw!)) throw new Error(`bad value in: ${line}`);
    samples.push({ name: name!, labels, value });
  }
  return samples;
}

/** A series' labels as one string (sorted JSON): the key of series() and increase(). */
export const labelsKey = (labels: Record<string, string>) => JSON.stringify(Object.fromEntries(Object.entries(labels).sort(([a], [b]) => a.localeCompare(b))));

/** The samples of one metric, by their labels (JSON of the sorted labels) -> value. */
export function series(samples: Sample[], name: string): Map<string, number> {
  const result = new Map<string, number>();
  for (const sample of samples) {
    if (sample.name !== name) continue;
    result.set(labelsKey(sample.labels), sample.value);
  }
  return result;
}

/** What moved between two scrapes of a counter: labels -> increase, only the series that changed. */
export function increase(before: Sample[], after: Sample[], name: string): Record<string, number> {
  const old = series(before, name);
  const moved: Record<string, number> = {};
  for (const [labels, value] of series(after, name)) {
    const delta = value - (old.get(labels) ?? 0);
    if (delta !== 0) moved[labels] = delta;
  }
  return moved;
}
