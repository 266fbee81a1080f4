import { InvalidInputError } from './errors.js';

/** At most 10 integer digits and 2 decimals: what numeric(12,2) holds, never negative. */
const MONEY = /^[0-9]{1,10}(\.[0-9]{1,2})?$/;

/**
 * Turns a money input (a string, or a JSON number) into the exact decimal string stored in
 * numeric(12,2). A number is read through its shortest round-trip text, so 19.99 stays "19.99"
 * and 0.1 + 0.2 (0.30000000000000004) is refused instead of rounded.
 */
export function parseMoney(value: string | number, pointer: string): string {
  const text = typeof value === 'number' ? String(value) : value;
  if (!MONEY.test(text)) {
    throw new InvalidInputError(`${pointer.slice(1)} must be a non-negative amount with at most two decimals`, [
      { pointer, message: 'must be a non-negative amount up to 9999999999.99 with at most two decimals' },
    ]);
  }
  return text;
}

/** A numeric from PostgreSQL (or nothing, for an empty sum) as a two-decimal string. */
export function formatMoney(value: string | null | undefined): string {
  if (value === null || value === undefined) return '0.00';
  const [whole, fraction = ''] = value.split('.');
  return `${whole}.${fraction.padEnd(2, '0').slice(0, 2)}`;
}
