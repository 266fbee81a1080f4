// ESLint 10 flat config (make lint): typescript-eslint's type-checked rules on src/, test/, scripts/
// and bench/, with the type information of tsconfig.json (projectService). Promises a Koa app drops
// or hands to a callback that ignores them are errors. A recommended rule is off only where all it
// found here is a deliberate pattern; the reason is on its line.
import js from '@eslint/js';
import { defineConfig, globalIgnores } from 'eslint/config';
import tseslint from 'typescript-eslint';

export default defineConfig(
  globalIgnores(['generated/', 'bench/results/', 'docs/', '.data/']),
  {
    files: ['{src,test,scripts,bench}/**/*.ts'],
    extends: [js.configs.recommended, tseslint.configs.recommendedTypeChecked],
    languageOptions: { parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname } },
    linterOptions: { reportUnusedDisableDirectives: 'error' },
    rules: {
      // The two a Koa app must never have: a promise nobody awaits, and an async function passed where
      // a void callback is expected (an event handler, a timer, a non-async middleware slot).
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': 'error',
      // Promise.all over `cond ? promise : undefined` waits for the promises there are; an array with none still errs.
      '@typescript-eslint/await-thenable': ['error', { allowMixedPromiseArrays: true }],
      // `_name` marks a parameter, element or rest sibling left out on purpose.
      '@typescript-eslint/no-unused-vars': [
        'error',
        { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrorsIgnorePattern: '^_', destructuredArrayIgnorePattern: '^_', ignoreRestSiblings: true },
      ],
      // A `let` assigned late but read earlier by a cleanup function must stay `let` (const would throw there).
      'prefer-const': ['error', { ignoreReadBeforeAssign: true }],
      // Arrays print as a list (header values are `string | string[]`); a value cast from the environment and
      // rejected by the checks before it is printed in the error with type `never`. Objects stay errors.
      '@typescript-eslint/restrict-template-expressions': ['error', { allowArray: true, allowNever: true }],
      // Kysely's expression builder is destructured by design (`({ eb, ref }) => ...`); its methods are bound.
      '@typescript-eslint/unbound-method': 'off',
      // `{}` means "no parameters" in the type-level mapping of generated operations (src/http/operation.ts).
      '@typescript-eslint/no-empty-object-type': 'off',
      // `Kysely<any>` is Kysely's documented type for migrations, which must not depend on today's schema.
      '@typescript-eslint/no-explicit-any': 'off',
      // Casts kept as documentation at typed boundaries (by-id.ts's `as ByIdTable as 'users'`); a redundant one is harmless.
      '@typescript-eslint/no-unnecessary-type-assertion': 'off',
      // Koa's `return next()` (Next is `() => Promise<any>`) and pg's any-typed type parsers passed through.
      '@typescript-eslint/no-unsafe-return': 'off',
      // String(x) of open types on purpose (a non-Error migration failure, an enum value of a parsed schema);
      // template literals are still checked by restrict-template-expressions.
      '@typescript-eslint/no-base-to-string': 'off',
      // Its hits are defaults given at a declaration and overwritten on every path, a deliberate style.
      'no-useless-assignment': 'off',
      // The fuzz test replaces control characters in header values on purpose.
      'no-control-regex': 'off',
    },
  },
  {
    // Tests, the bench and scripts read JSON bodies and raw SQL rows as `any` on purpose; typing each is a rewrite.
    files: ['{test,scripts,bench}/**/*.ts'],
    rules: {
      '@typescript-eslint/no-unsafe-assignment': 'off',
      '@typescript-eslint/no-unsafe-member-access': 'off',
      '@typescript-eslint/no-unsafe-call': 'off',
      '@typescript-eslint/no-unsafe-argument': 'off',
    },
  },
);
