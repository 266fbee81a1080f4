import pg from 'pg';

export interface SqlStatement {
  text: string;
  values?: unknown[];
}

export interface HalfwayRun {
  /** Errors of the writers other than the expected races. */
  errors: string[];
  /** What the check returned when it ran with every writer paused halfway. */
  halfwayState: string | undefined;
  /** How many checks ran while the writers wrote. */
  checks: number;
}

/**
 * Parallel writers (one connection each, its statements in order) while `check` runs again and
 * again. Every writer pauses halfway until one check has started after all of them got there: so
 * at least one check sees the workload half done, whatever the machine's speed. A statement that
 * fails with an SQLSTATE of `expectedRace` is part of the workload; any other error is returned.
 */
export async function writeWhileChecking(databaseUrl: string, workload: SqlStatement[][], expectedRace: ReadonlySet<string>, check: () => Promise<string>): Promise<HalfwayRun> {
  const errors: string[] = [];
  let writing = true;
  let halfway = 0;
  let releaseHalfway!: () => void;
  const halfwayChecked = new Promise<void>((resolve) => (releaseHalfway = resolve));
  let halfwayState: string | undefined;
  const checks = (async () => {
    let n = 0;
    try {
      while (writing) {
        const allHalfway = halfway === workload.length;
        const state = await check();
        n++;
        if (allHalfway && halfwayState === undefined) {
          halfwayState = state;
          releaseHalfway();
        }
      }
      return n;
    } finally {
      releaseHalfway(); // a failed check must not leave the writers waiting
    }
  })();
  checks.catch(() => {}); // its failure is reported where it is awaited, below
  await Promise.all(
    workload.map(async (statements) => {
      const client = new pg.Client({ connectionString: databaseUrl });
      await client.connect();
      try {
        for (const [i, s] of statements.entries()) {
          if (i === Math.floor(statements.length / 2)) {
            halfway++;
            await halfwayChecked;
          }
          await client.query(s.text, s.values).catch((err: { code?: string; message: string }) => {
            if (!expectedRace.has(err.code ?? '')) errors.push(`${err.code}: ${err.message}`);
          });
        }
      } finally {
        await client.end();
      }
    }),
  ).finally(() => {
    writing = false;
  });
  return { errors, halfwayState, checks: await checks };
}
